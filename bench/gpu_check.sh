#!/usr/bin/env bash
# One GPU session's checks, in one command (device time is scarce): the card, the bench's
# ResNet-50@224 AMP rate (plain and the paper's dilated encoder), the same step under
# torchrun over all GPUs, and `mpcs pretrain` end to end on CUDA (single process, then
# torchrun over all GPUs with SyncBatchNorm, then --resume of the finished run). DDP, NCCL
# and SyncBatchNorm are exercised only where the machine has 2 or more GPUs. Logs go to $OUT (or ./gpu-check-out).
#
#   bash bench/gpu_check.sh          # on a GPU machine, from the repository root
#   SMOKE=1 bash bench/gpu_check.sh  # a CPU rehearsal with tiny settings (numbers meaningless)
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MPCS="$PY -m mpcs"
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember a failure, go on
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 6 "$OUT/$name.log"
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || status=1
}

if [ -n "${SMOKE:-}" ]; then
    BENCH=(--device cpu --encoder resnet18 --size 32 --batch 4 --steps 2 --warmup 1)
    DILATED=(--device cpu --encoder resnet18 --size 32 --batch 4 --steps 2 --warmup 1)
    DEV=cpu; SYNC=false; NPROC=1
    PRE=(--preset cpu-small --set train.epochs=2 --set data.input_size=32
         --set train.batch_size=16 --set monitor.knn_every=0)
else
    BENCH=()
    DILATED=(--encoder resnet50_dilated --batch 128 --steps 10 --warmup 3)
    # every GPU: with 2 or more, torchrun runs DDP over NCCL with SyncBatchNorm; with one,
    # torchrun starts the single-process path (no process group, no DDP, no SyncBN)
    DEV=cuda; SYNC=true; NPROC=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU')
    [ "${NPROC:-0}" -ge 1 ] 2> /dev/null || NPROC=1
    PRE=(--preset cpu-small --set train.epochs=3 --set data.input_size=112
         --set train.batch_size=32 --set monitor.knn_every=0)
fi

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

if [ -z "${SKIP_BENCH:-}" ]; then
step bench_resnet50 $PY bench/gpu_throughput.py "${BENCH[@]}"
step bench_resnet50_dilated $PY bench/gpu_throughput.py "${DILATED[@]}"
step bench_torchrun $PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC \
    bench/gpu_throughput.py --json "${BENCH[@]}"
fi

DATA="$OUT/synth"
step synth $MPCS synth --out "$DATA" --patients 12 --samples-per-patient 4 --quiet
step pretrain $MPCS pretrain --data "$DATA" --out "$OUT/run1" "${PRE[@]}" --set train.device=$DEV
step pretrain_torchrun $PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC \
    -m mpcs pretrain --data "$DATA" --out "$OUT/run2" "${PRE[@]}" --set train.device=$DEV \
    --set distributed.sync_bn=$SYNC
step pretrain_resume $PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC \
    -m mpcs pretrain --data "$DATA" --out "$OUT/run2" "${PRE[@]}" --set train.device=$DEV \
    --set distributed.sync_bn=$SYNC --resume
for r in run1 run2; do
    [ -f "$OUT/$r/metrics.jsonl" ] && cp "$OUT/$r/metrics.jsonl" "$OUT/$r-metrics.jsonl"
done
rm -rf "$DATA" "$OUT/run1" "$OUT/run2"
echo "gpu_check: status $status"
exit $status
