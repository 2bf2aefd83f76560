"""P5: images/s of ``predict`` on real-size PNGs / images/s of a bare forward of the same model.

``predict`` (:func:`mpcs.api.predict.predict`, in this process, imports already done): list
the files, load the fine-tuned checkpoint, decode and resize every 700x460 PNG on the
background thread(s) while the model runs on the previous batch, write the CSV batch by
batch and the patient table. The bare forward: the same classifier (channels-last,
``torch.inference_mode``, the same torch threads and batch size) on a ready float batch,
as many images. The two alternate so that outside load hits both; medians are used.

Both run with ``OMP_WAIT_POLICY=PASSIVE`` as ``mpcs predict`` does (``--wait-policy active``
for OpenMP's default, spinning idle threads). Also the wall time of ``python -m mpcs predict``
on ONE image in a fresh process (imports,
checkpoint, one forward, CSV), alternating with the throughput runs, and with
``--startup`` the ``python -X importtime`` breakdown of that command.

The checkpoint is made first: EfficientNet-Lite0 at 224 px from the offline ImageNet
weights, fine-tuned for one epoch on the 40X images of two of the generated patients
(``mpcs.engine.finetune.finetune``), or ``--checkpoint`` gives one.

Run: ``.venv/bin/python bench/p5_inference.py`` (about 3-5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import header, peak_rss_mb, verdict

from mpcs.api.predict import predict
from mpcs.config import resolve
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.engine.finetune import finetune
from mpcs.engine.loading import load_model

TARGET = 0.8
ONE_IMAGE_TARGET_S = 3.0
ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(data: Path, out: Path, size: int) -> Path:
    """One epoch of fine-tuning EfficientNet-Lite0 (ImageNet init) on 40X images."""
    manifest = scan_breakhis(data)
    manifest = manifest[manifest["magnification"] == "40X"]
    benign = sorted(manifest.loc[manifest["label"] == "benign", "patient_id"].unique())
    malignant = sorted(manifest.loc[manifest["label"] == "malignant", "patient_id"].unique())
    split = {"train": [benign[0], malignant[0]], "val": [benign[-1]], "test": [malignant[-1]]}
    train, val, test = (manifest[manifest["patient_id"].isin(split[k])].reset_index(drop=True)
                        for k in ("train", "val", "test"))
    cfg = resolve(preset="finetune-cpu-small", kind="finetune", overrides=[
        "model.encoder=tf_efficientnet_lite0", f"data.input_size={size}", "train.epochs=1",
        "train.batch_size=8", "data.use_cache=false"])
    finetune(cfg, train, val, test, out, init="imagenet", progress=False)
    return out / "best.pt"


def bare_rate(model: torch.nn.Module, n: int, batch: int, size: int) -> float:
    """Images/s of the model alone on ready channels-last batches (``n`` images)."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n:
            model(x[:min(batch, n - done)])
            done += min(batch, n - done)
    return n / (time.perf_counter() - t0)


def predict_rate(ckpt: Path, images: Path, n: int, batch: int, out: Path) -> float:
    t0 = time.perf_counter()
    df = predict(ckpt, images, out, batch_size=batch, progress=False)
    assert len(df) == n, (len(df), n)
    return n / (time.perf_counter() - t0)


def one_image_wall(ckpt: Path, image: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "mpcs", "predict", "--checkpoint", str(ckpt), "--images",
           str(image), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


_PHASES = """
import sys, time
t0 = time.perf_counter()
import mpcs.cli.inference  # everything `mpcs predict` imports
t1 = time.perf_counter()
from mpcs.engine.loading import load_model
load_model(sys.argv[1])
t2 = time.perf_counter()
from mpcs.cli import main
sys.argv = ["mpcs", "predict", "--checkpoint", sys.argv[1], "--images", sys.argv[2], "--out",
            sys.argv[3], "--quiet"]
main()  # as the program: argv None
t3 = time.perf_counter()
print(f"PHASES {t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f} {time.time():.6f}")
"""
_PACKAGES = ("torch", "timm", "torchvision", "torch._dynamo", "pandas", "numpy", "PIL",
             "safetensors", "tqdm", "sklearn", "scipy", "matplotlib", "mpcs.engine.loading",
             "mpcs.models.features", "mpcs.api.predict", "mpcs.cli.inference")


def startup_breakdown(ckpt: Path, image: Path, out: Path) -> None:
    """Where the one-image command's time goes: interpreter start, imports (the largest,
    cumulative, from ``-X importtime``), loading the checkpoint, the command itself."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare_python = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", _PHASES, str(ckpt),
                           str(image), str(out)], check=True, cwd=ROOT, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    ended = time.time()
    phases = [float(v) for v in done.stdout.split("PHASES")[1].split()]
    seen: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if m and m.group(2) in _PACKAGES:
            seen[m.group(2)] = int(m.group(1)) / 1e6
    print(f"one-image predict, phases (-X importtime adds a little): interpreter "
          f"{bare_python:.2f} s, imports {phases[0]:.2f} s, load_model {phases[1]:.2f} s, "
          f"the command (load again, decode, forward, CSVs) {phases[2]:.2f} s, exit "
          f"{ended - phases[3]:.2f} s; {wall:.2f} s in all")
    for name in _PACKAGES:
        if name in seen:
            print(f"  import {name:24s} {seen[name]:6.2f} s (cumulative, first import)")
    missing = [k for k in ("sklearn", "scipy", "matplotlib") if k not in seen]
    print(f"  not imported: {', '.join(missing) or '-'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="PNGs of 700x460 (multiple of 16)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="network input size")
    ap.add_argument("--rounds", type=int, default=5, help="alternating predict/bare rounds")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--checkpoint", type=Path, help="a fine-tuned best.pt to use instead")
    ap.add_argument("--startup", action="store_true", help="print the import-time breakdown")
    ap.add_argument("--wait-policy", choices=("passive", "active"), default="passive",
                    help="OMP_WAIT_POLICY of both measurements and of the one-image command "
                    "(passive: what `mpcs predict` sets; the script restarts itself with it)")
    args = ap.parse_args()
    policy = args.wait_policy.upper()
    if os.environ.get("OMP_WAIT_POLICY") != policy:  # read by OpenMP when torch loads
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "OMP_WAIT_POLICY": policy})
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    header("P5 inference: predict vs bare forward")
    with tempfile.TemporaryDirectory(prefix="mpcs-p5-") as tmp:
        tmp_path = Path(tmp)
        data = write_breakhis(tmp_path / "data", SynthConfig(
            patients=4, samples_per_patient=max(1, args.images // 16), image_size=(700, 460),
            seed=0), progress=False)
        n = len(list(data.rglob("*.png")))
        t0 = time.perf_counter()
        ckpt = args.checkpoint or make_checkpoint(data, tmp_path / "ft", args.size)
        print(f"{n} PNGs of 700x460; checkpoint {'given' if args.checkpoint else 'made'} in "
              f"{time.perf_counter() - t0:.1f} s; batch {args.batch}; torch threads "
              f"{torch.get_num_threads()}; decode threads: auto ({os.cpu_count()} cores); "
              f"OMP_WAIT_POLICY={policy}")
        loaded = load_model(ckpt)
        model = loaded.classifier.eval()
        size = loaded.input_size
        one = sorted(data.rglob("*.png"))[0]
        rates: dict[str, list[float]] = {"predict": [], "bare": [], "one": []}
        for r in range(args.rounds):
            rates["predict"].append(predict_rate(ckpt, data, n, args.batch, tmp_path / "p.csv"))
            rates["bare"].append(bare_rate(model, n, args.batch, size))
            rates["one"].append(one_image_wall(ckpt, one, tmp_path / "one.csv"))
            print(f"round {r + 1}: predict {rates['predict'][-1]:.1f} img/s, bare "
                  f"{rates['bare'][-1]:.1f} img/s, one-image predict {rates['one'][-1]:.2f} s "
                  f"(load average {os.getloadavg()[0]:.2f})")
        if args.startup:
            startup_breakdown(ckpt, one, tmp_path / "one.csv")
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median: predict {med['predict']:.1f} img/s, bare forward {med['bare']:.1f} img/s; "
          f"one-image predict {med['one']:.2f} s wall (best {min(rates['one']):.2f} s, target "
          f"<= {ONE_IMAGE_TARGET_S:g} s: {'PASS' if med['one'] <= ONE_IMAGE_TARGET_S else 'MISS'})")
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    print(verdict("P5 ratio (predict / bare forward)", med["predict"] / med["bare"], TARGET,
                  True))


if __name__ == "__main__":
    main()
