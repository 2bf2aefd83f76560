"""Nothing lost, round 2 (issue 14, part A): run folders, locks, resume data, full disks, Ctrl-C.

* a folder holding a run is refused without ``--resume`` / ``--overwrite``; ``--overwrite``
  moves the old run aside and deletes it only once the new run can stand in for it
  (pretrain: its first checkpoint; finetune / linear-eval: its end);
* finetune, linear-eval and experiment take the lock pretrain takes;
* ``--resume`` refuses images that changed since the run started and names what changed;
* a read-only output folder and a full disk are one line and exit 2, the previous
  checkpoint intact;
* Ctrl-C, also inside a checkpoint write, is one line naming the checkpoint to resume from.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mpcs.api.embed as embed_mod
import mpcs.api.predict as inference_mod
import mpcs.core.checkpoint as checkpoint_mod
import mpcs.engine.downstream as downstream_mod
import mpcs.engine.finetune as ft
import mpcs.engine.linear as linear_mod
import mpcs.engine.pair_data as pair_data_mod
import mpcs.engine.pretrain as pretrain_mod
import mpcs.engine.run_records as records_mod
import mpcs.engine.trainer as trainer_mod
import mpcs.evaluation.experiment as exp_mod
from mpcs.cli import main
from mpcs.config import resolve
from mpcs.core.checkpoint import load_checkpoint, save_checkpoint
from mpcs.core.errors import MpcsError, OutputError
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.splits import Splits
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.engine.finetune import finetune, linear_eval
from mpcs.engine.pretrain import pretrain
from mpcs.engine.runinfo import lock_folder
from mpcs.evaluation.experiment import run_experiment
from tests.conftest import TINY_OVERRIDES

# timm's 0.5M-parameter test ResNet: the code paths of a real run, in a fraction of the time.
FAST = [*TINY_OVERRIDES, "model.encoder=test_resnet", "train.device=cpu", "train.threads=1"]
FT = ["data.input_size=32", "model.encoder=test_resnet", "train.epochs=1", "train.batch_size=8",
      "train.eval_batch_size=32", "linear.epochs=2", "train.device=cpu", "train.threads=1",
      "data.use_cache=false", "schedule.warmup_epochs=0"]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def pretrain_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(run), "--quiet", *sets(*FAST), *extra]


def downstream_args(command: str, grid: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    data, splits = grid
    return [command, "--data", str(data), "--splits", str(splits), "--fold", "1",
            "--magnification", "100X", "--init", "none", "--out", str(out), "--preset",
            "finetune-cpu-small", "--quiet", *sets(*FT), *extra]


def error_line(err: str, command: str) -> str:
    """The single ``mpcs <command>: error:`` line of stderr (asserting there is one)."""
    lines = [x for x in err.splitlines() if x.startswith(f"mpcs {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def fail(what: str) -> Callable[..., None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(what)

    return refuse


def ctrl_c(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Ten patients of synthetic BreakHis data and a 2-fold splits file made for them."""
    root = tmp_path_factory.mktemp("nothing-lost")
    data = write_breakhis(root / "d", SynthConfig(patients=10, samples_per_patient=2,
                                                  image_size=(48, 32)), progress=False)
    splits = root / "splits.json"
    assert main(["splits", "--data", str(data), "--out", str(splits), "--folds", "2"]) == 0
    return data, splits


@pytest.fixture
def dev_full() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to stand in for a full disk")


def fill_disk(monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """From the ``after + 1``-th atomic write of a file called ``name`` on, its temporary file
    is /dev/full: every write fails with ENOSPC, as on a full disk."""
    real = tempfile.mkstemp
    writes: list[str] = []

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, tmp = real(*args, **kwargs)  # type: ignore[call-overload]
        if Path(tmp).name.startswith(f".{name}."):
            writes.append(tmp)
            if len(writes) > after:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


class FailsAfter:
    """The file torch.save writes to; once 4 KiB of it are written, every write raises
    ``error`` (OSError ENOSPC: the disk is full; KeyboardInterrupt: Ctrl-C). torch's zip
    writer, finishing the file while that error unwinds, raises "unexpected pos"."""

    def __init__(self, f: object, error: BaseException) -> None:
        self.f, self.error, self.written = f, error, 0

    def write(self, data: bytes) -> int:
        if self.written > 4096:
            raise self.error
        self.written += len(data)
        return self.f.write(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)


def break_saves(monkeypatch: pytest.MonkeyPatch, error: BaseException, epoch: int) -> None:
    """The checkpoint of ``epoch`` runs into ``error`` after its first 4 KiB."""
    real_save = torch.save

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == epoch:
            f = FailsAfter(f, error)
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint_mod.torch, "save", save)


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` behaves as on a read-only mount (as root, chmod would not stop a write):
    access() finds it not writable, and a file created in it fails with EROFS."""
    folder = folder.absolute()
    real_access, real_mkstemp = os.access, tempfile.mkstemp

    def inside(path: object) -> bool:
        where = Path(str(path)).absolute()
        return where == folder or folder in where.parents

    def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
        if mode & os.W_OK and inside(path):
            return False
        return real_access(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    def mkstemp(*args: object, dir: object = None, **kwargs: object) -> tuple[int, str]:
        if dir is not None and inside(dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# --------------------------------------------------------------------------- 1: run folders


def test_pretrain_refuses_a_folder_holding_a_run_before_any_work(
        tiny_breakhis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(pretrain_args(tiny_breakhis, run)) == 0
    before = files(run)
    capsys.readouterr()
    monkeypatch.setattr(pretrain_mod, "find_pair_sources", fail("scanned the data"))
    assert main(pretrain_args(tiny_breakhis, run)) == 2
    line = error_line(capsys.readouterr().err, "pretrain")
    assert f"{run} already holds a run" in line and "checkpoints/last.pt" in line
    assert "--resume" in line and "--overwrite" in line
    assert files(run) == before
    assert not list(tmp_path.glob("run.replaced-*"))


def test_pretrain_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(
        tiny_breakhis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(pretrain_args(tiny_breakhis, run)) == 0
    old = files(run)

    # Ctrl-C in the new run's first epoch, before its first checkpoint: the old run is kept.
    monkeypatch.setattr(trainer_mod, "train_step", ctrl_c)
    capsys.readouterr()
    assert main(pretrain_args(tiny_breakhis, run, "--overwrite")) == 130
    [aside] = tmp_path.glob("run.replaced-*")
    assert files(aside) == {k: v for k, v in old.items() if k != ".lock"}
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (f"mpcs pretrain: interrupted; no checkpoint was written yet in {run}; start again "
            f"with --resume; the previous run (--overwrite) is kept in {aside}") in err
    monkeypatch.undo()
    # ... and the advice works: --resume starts from scratch in the folder.
    assert main(pretrain_args(tiny_breakhis, run, "--resume")) == 0

    # Replacing a finished run: it stays beside the folder until the new run's first
    # checkpoint is written, and is deleted then.
    aside_at_save: list[list[str]] = []
    real_save = records_mod.save_checkpoint

    def spy(state: dict, path: Path) -> None:
        aside_at_save.append(sorted(p.name for p in tmp_path.glob("run.replaced-*")))
        real_save(state, path)

    monkeypatch.setattr(records_mod, "save_checkpoint", spy)
    assert main(pretrain_args(tiny_breakhis, run, "--overwrite", "--set", "train.epochs=2")) == 0
    assert len(aside_at_save[0]) == 2 and aside.name in aside_at_save[0]
    assert aside_at_save[-1] == [aside.name]
    assert [p.name for p in tmp_path.glob("run.replaced-*")] == [aside.name]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("command", ["finetune", "linear-eval"])
def test_downstream_refuses_a_finished_folder_and_overwrite_keeps_it_until_the_end(
        command: str, grid: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ft"
    assert main(downstream_args(command, grid, out)) == 0
    before = files(out)
    capsys.readouterr()
    assert main(downstream_args(command, grid, out)) == 2
    line = error_line(capsys.readouterr().err, command)
    assert f"{out} already holds a run" in line and "test_metrics.json" in line
    assert "--overwrite" in line and "--resume" not in line
    assert files(out) == before

    # --overwrite interrupted before the new run finished: the old run is kept beside.
    real_finish = downstream_mod._finish
    monkeypatch.setattr(downstream_mod, "_finish", ctrl_c)
    assert main(downstream_args(command, grid, out, "--overwrite")) == 130
    [aside] = tmp_path.glob("ft.replaced-*")
    kept = {k: v for k, v in before.items() if k != ".lock" and not k.startswith("features_")}
    assert files(aside) == kept

    # --overwrite of that half run: its files stay beside until the new run has finished.
    replaced_at_finish: list[int] = []

    def spy(*args: object, **kwargs: object) -> dict:
        replaced_at_finish.append(len(list(tmp_path.glob("ft.replaced-*"))))
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(downstream_mod, "_finish", spy)
    assert main(downstream_args(command, grid, out, "--overwrite")) == 0
    assert replaced_at_finish == [2]
    assert list(tmp_path.glob("ft.replaced-*")) == [aside]
    assert json.loads((out / "test_metrics.json").read_text())["mode"] in ("finetune", "linear")


# --------------------------------------------------------------------------- 4: one lock


def test_finetune_linear_eval_experiment_and_pretrain_take_the_same_lock(
        grid: tuple[Path, Path], tiny_breakhis: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data, splits_file = grid
    manifest = scan_breakhis(data)
    splits = Splits.load(splits_file, manifest)
    train, val, test = (splits.frame(manifest, 1, part) for part in ("train", "val", "test"))
    cfg = resolve(preset="finetune-cpu-small", kind="finetune", overrides=FT)
    monkeypatch.setattr(ft, "load_pixels", fail("fine-tuned in a folder in use"))
    monkeypatch.setattr(linear_mod, "_features", fail("linear-evaluated in a folder in use"))
    monkeypatch.setattr(exp_mod, "scan_breakhis", fail("ran an experiment in a folder in use"))
    monkeypatch.setattr(pair_data_mod, "PairData", fail("pre-trained in a folder in use"))
    out = tmp_path / "busy"
    held = lock_folder(out)  # another mpcs process is writing the folder
    try:
        for run in (finetune, linear_eval):
            with pytest.raises(OutputError, match="in use by another mpcs process"):
                run(cfg, train, val, test, out, init="none", progress=False)
        with pytest.raises(OutputError, match="in use by another mpcs process"):
            run_experiment(resolve(preset="experiment-cpu-small", kind="experiment"), data, out,
                           progress=False)
        with pytest.raises(OutputError, match="in use by another mpcs process"):
            pretrain(resolve(preset="cpu-small", overrides=FAST), tiny_breakhis, out,
                     progress=False)
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written beside it
    finally:
        held.close()


# --------------------------------------------------------------------------- 5: resume data


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_resume_refuses_images_changed_in_place_naming_the_patient(
        tiny_breakhis: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = copy_data(tiny_breakhis, tmp_path / "data")
    run = tmp_path / "run"
    assert main(pretrain_args(data, run)) == 0
    recorded = json.loads((run / "run.json").read_text())["data_fingerprint"]
    assert recorded["images"] == 48 and len(recorded["patients"]) == 4
    manifest = scan_breakhis(data)
    row = manifest.iloc[5]
    image = Path(row["path"])
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB"))
    stat = image.stat()
    Image.fromarray(255 - pixels).save(image)  # same name, other pixels
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse clocks
    capsys.readouterr()
    assert main(pretrain_args(data, run, "--resume")) == 2
    line = error_line(capsys.readouterr().err, "pretrain")
    assert str(run / "run.json") in line and "refusing to resume on other data" in line
    assert f"patient(s) {row['patient_id']} have the same names" in line
    assert "other sizes or modification times" in line


def test_resume_refuses_removed_images_and_moved_data(
        tiny_breakhis: Path, tmp_path: Path) -> None:
    data = copy_data(tiny_breakhis, tmp_path / "data")
    run = tmp_path / "run"
    cfg = resolve(preset="cpu-small", overrides=FAST)
    pretrain(cfg, data, run, progress=False)
    moved = tmp_path / "elsewhere"
    data.rename(moved)
    with pytest.raises(MpcsError, match="the images moved from .*data.* to .*elsewhere"):
        pretrain(cfg, moved, run, resume=True, progress=False)
    moved.rename(data)
    Path(scan_breakhis(data).iloc[0]["path"]).unlink()  # its sample leaves the pairs
    with pytest.raises(MpcsError, match=r"removed, renamed or relabelled \(48 then, 44 now\)"):
        pretrain(cfg, data, run, resume=True, progress=False)


def test_resume_of_a_run_without_a_fingerprint_goes_on_with_a_note(
        tiny_breakhis: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    cfg = resolve(preset="cpu-small", overrides=FAST)
    pretrain(cfg, tiny_breakhis, run, progress=False)
    info = json.loads((run / "run.json").read_text())
    info.pop("data_fingerprint", None)  # as written by an older mpcs
    (run / "run.json").write_text(json.dumps(info))
    with caplog.at_level(logging.INFO, logger="mpcs"):
        again = pretrain(cfg, tiny_breakhis, run, resume=True, progress=False)
    assert again["epochs"] == 1
    assert f"{run / 'run.json'} records no fingerprint of the data" in caplog.text
    resumed = json.loads((run / "run.json").read_text())["resumed"]
    assert resumed[-1]["data_fingerprint"]["images"] == 48  # checked from now on


# --------------------------------------------------------------------------- 7: full disk


@pytest.mark.parametrize("command", ["predict", "embed", "splits", "finetune"])
def test_read_only_output_folder_is_one_line_and_exit_2(
        command: str, grid: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    data, _ = grid
    folder = tmp_path / "read-only"
    folder.mkdir()
    read_only(monkeypatch, folder)
    if command == "predict":
        monkeypatch.setattr(inference_mod, "load_model", fail("predicted before checking --out"))
        out = folder / "predictions.csv"
        args = ["predict", "--checkpoint", str(tmp_path / "best.pt"), "--images", str(data),
                "--out", str(out), "--quiet"]
    elif command == "embed":
        monkeypatch.setattr(embed_mod, "load_model", fail("embedded before checking --out"))
        out = folder / "features.csv"
        args = ["embed", "--checkpoint", str(tmp_path / "last.pt"), "--images", str(data),
                "--out", str(out), "--quiet"]
    elif command == "splits":
        out = folder / "splits.json"
        args = ["splits", "--data", str(data), "--out", str(out), "--folds", "2"]
    else:
        monkeypatch.setattr(ft, "init_encoder", fail("fine-tuned before checking --out"))
        out = folder / "run"
        args = downstream_args("finetune", grid, out)
    capsys.readouterr()
    assert main(args) == 2
    line = error_line(capsys.readouterr().err, command)
    assert str(out) in line and "read-only" in line.lower()
    assert not out.exists()


@pytest.mark.parametrize("full", ["dev_full", "short_write"])
def test_checkpoint_write_on_a_full_disk_keeps_the_previous_file(
        full: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.zeros(4)}, path)
    before = path.read_bytes()
    if full == "dev_full":  # the file lands on /dev/full: every write fails
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full to stand in for a full disk")
        fill_disk(monkeypatch, "last.pt")
    else:  # space runs out half-way: torch's zip writer says "unexpected pos"
        break_saves(monkeypatch, disk_full(), epoch=2)
    with pytest.raises(OutputError) as err:
        save_checkpoint({"epoch": 2, "w": torch.ones(256, 256)}, path)
    assert isinstance(err.value, OSError) and isinstance(err.value, MpcsError)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot write checkpoint {path}: ")
    assert "No space left on device" in msg and "the previous last.pt is unchanged" in msg
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_pretrain_disk_full_during_a_checkpoint_write_is_one_line(
        tiny_breakhis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    break_saves(monkeypatch, disk_full(), epoch=2)  # epoch 1's last.pt fits, epoch 2's not
    assert main(pretrain_args(tiny_breakhis, run, "--set", "train.epochs=2")) == 2
    line = error_line(capsys.readouterr().err, "pretrain")
    assert "No space left on device" in line and "end of epoch 2" in line
    assert f"{run / 'checkpoints' / 'last.pt'} (epoch 1)" in line and "--resume" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list((run / "checkpoints").glob(".*.tmp"))


@pytest.mark.parametrize("name", ["run.json", "best.pt"])
def test_finetune_disk_full_is_one_line_and_exit_2(
        name: str, grid: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, dev_full: None) -> None:
    out = tmp_path / "ft"
    fill_disk(monkeypatch, name)
    capsys.readouterr()
    assert main(downstream_args("finetune", grid, out)) == 2
    line = error_line(capsys.readouterr().err, "finetune")
    assert str(out / name) in line and "No space left on device" in line
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- 8: Ctrl-C


def test_ctrl_c_during_a_checkpoint_write_is_one_line_naming_the_resume_point(
        tiny_breakhis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    break_saves(monkeypatch, KeyboardInterrupt(), epoch=2)
    assert main(pretrain_args(tiny_breakhis, run, "--set", "train.epochs=2")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err
    said = [x for x in err.splitlines() if x.startswith("mpcs pretrain:")]
    assert said == [f"mpcs pretrain: interrupted; the last checkpoint is {last} (epoch 1); "
                    f"continue with --resume"]
    assert load_checkpoint(last)["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(pretrain_args(tiny_breakhis, run, "--resume", "--set", "train.epochs=2")) == 0
    assert load_checkpoint(last)["epoch"] == 2
