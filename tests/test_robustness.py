"""Nothing lost, nothing leaked: bad images, non-finite losses, crashes, unwritable folders.

Each test proves one promise of ``mpcs pretrain`` (and ``mpcs inspect``) on tiny data:

* a bad image (at the header check or at decode, also inside the cache's worker threads)
  is one clear line naming the file and exit code 2, or, with ``--on-bad-image skip``, is
  left out and listed in ``RUN/skipped_images.csv``; odd but valid images train fine;
* a non-finite loss or gradient never reaches the weights (``train.on_nonfinite``);
* a run killed mid-epoch resumes to the same weights as an uninterrupted run;
* same seed, same draws and losses; an unwritable output folder or a full disk is a clear
  message, and the last good checkpoint survives;
* a checkpoint holding a pickled object is refused, not executed.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mpcs.core.checkpoint as checkpoint_mod
import mpcs.engine.pair_data as pair_data_mod
import mpcs.engine.run_records as records_mod
import mpcs.methods.mpcs as mpcs_method_mod
from mpcs.cli import main
from mpcs.config import resolve
from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import CheckpointError, DataError, NonFiniteLossError, OutputError
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.cache import load_images, load_images_with_report
from mpcs.data.datasets.breakhis import complete_samples, scan_breakhis
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.engine.pretrain import load_pretrained, pretrain
from mpcs.losses import NTXentLoss
from tests.conftest import TINY_OVERRIDES

# TINY_OVERRIDES with timm's 0.5M-parameter test ResNet: same code paths, much faster steps.
FAST = [*TINY_OVERRIDES, "model.encoder=test_resnet", "train.device=cpu"]


def fast_cfg(*extra: str) -> dict:
    return resolve(preset="cpu-small", overrides=[*FAST, *extra])


def set_args(*extra: str) -> list[str]:
    return [a for o in (*FAST, *extra) for a in ("--set", o)]


def copy_data(src: Path, dst: Path) -> Path:
    """A private copy of a synthetic BreaKHis_v1 folder, safe to damage."""
    shutil.copytree(src, dst)
    return dst


def sample_paths(root: Path) -> list[dict[str, Path]]:
    """The four images of every complete sample, in sample-key order."""
    table = complete_samples(scan_breakhis(root))
    return [{m: Path(row[f"path_{m}"]) for m in MAGNIFICATIONS} for _, row in table.iterrows()]


def tensors_finite(state: dict) -> bool:
    out = True
    for value in state.values():
        if isinstance(value, dict):
            out &= tensors_finite(value)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            out &= bool(torch.isfinite(value).all())
    return out


def error_line(err: str, command: str = "pretrain") -> str:
    """The single ``mpcs <command>: error:`` line of stderr (asserting there is one)."""
    lines = [x for x in err.splitlines() if x.startswith(f"mpcs {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- bad image files


def make_zero_byte_png(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def make_truncated_png(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_text_as_png(path: Path) -> Path:
    path.write_text("patient notes, not an image\n")
    return path


def make_corrupt_tiff_header(path: Path) -> Path:
    """A .tif whose TIFF header is intact but whose IFD is garbage: unidentifiable."""
    tif = path.with_suffix(".tif")
    Image.open(path).convert("RGB").save(tif)
    data = bytearray(tif.read_bytes())
    data[8:200] = np.random.default_rng(0).integers(0, 256, 192, dtype=np.uint8).tobytes()
    tif.write_bytes(bytes(data))
    path.unlink()
    return tif


def make_truncated_tiff(path: Path) -> Path:
    """A .tif cut short: its header passes the scan, its pixels fail to decode."""
    tif = path.with_suffix(".tif")
    Image.open(path).convert("RGB").save(tif)
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) // 3])
    path.unlink()
    return tif


def make_garbage_pixels_png(path: Path) -> Path:
    """A PNG with valid chunks and CRCs (and IEND) whose compressed pixel data is noise."""
    data = path.read_bytes()
    out, pos = bytearray(data[:8]), 8
    rng = np.random.default_rng(0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            body = rng.integers(0, 256, len(body), dtype=np.uint8).tobytes()
        out += struct.pack(">I", len(body)) + kind + body
        out += struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        pos += 12 + length
    path.write_bytes(bytes(out))
    return path


# name -> (maker, stage that finds it, words of the reason)
BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "zero_byte_png": (make_zero_byte_png, "scan", "file is empty (0 bytes)"),
    "truncated_png": (make_truncated_png, "scan", "PNG data ends early (no IEND chunk)"),
    "text_file_as_png": (make_text_as_png, "scan", "not an image file (cannot identify format)"),
    "corrupt_tiff": (make_corrupt_tiff_header, "scan",
                     "not an image file (cannot identify format)"),
    "truncated_tiff": (make_truncated_tiff, "decode", "truncated or corrupt image"),
    "garbage_pixels_png": (make_garbage_pixels_png, "decode", "truncated or corrupt image"),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_in_error_mode_is_one_line_naming_it(
        kind: str, tiny_breakhis: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make, stage, reason = BAD_IMAGES[kind]
    root = copy_data(tiny_breakhis, tmp_path / "data")
    bad = make(sample_paths(root)[5]["200X"])
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(root), "--out", str(run), "--quiet", *set_args()])
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith(f"mpcs pretrain: error: {bad}: ")
    assert reason in line
    assert "--on-bad-image skip" in line
    assert not (run / "checkpoints" / "last.pt").exists()
    if stage == "scan":  # found by the header check; inspect (no decode) says the same
        assert main(["inspect", "--data", str(root)]) == 2
        line = error_line(capsys.readouterr().err, "inspect")
        assert line.startswith(f"mpcs inspect: error: {bad}: ") and reason in line


def test_bad_images_in_skip_mode_are_left_out_and_listed(
        tiny_breakhis: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    root = copy_data(tiny_breakhis, tmp_path / "data")
    samples = sample_paths(root)
    expected = {}
    for i, (make, stage, reason) in enumerate(BAD_IMAGES.values()):
        bad = make(samples[i][MAGNIFICATIONS[i % 4]])  # one bad image in each of 6 samples
        expected[str(bad)] = (stage, reason)
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(root), "--out", str(run), "--quiet",
                 "--on-bad-image", "skip", *set_args()])
    assert code == 0, capsys.readouterr().err
    with open(run / "skipped_images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == set(expected)
    for r in rows:
        stage, reason = expected[r["path"]]
        assert r["stage"] == stage and reason in r["reason"]
        if stage == "decode":
            assert "dropped from pre-training pairs" in r["reason"]
    info = json.loads((run / "run.json").read_text())
    assert info["skipped_images"] == 6 and info["pair_samples"] == 12 - 6
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 1  # 6 // 4
    assert "skipped 6 unusable image(s) (4 found by the scan, 2 failed to decode" in caplog.text
    # inspect lists what its header check skips (decode failures pass it: no decode there).
    assert main(["inspect", "--data", str(root), "--on-bad-image", "skip"]) == 0
    out = capsys.readouterr().out
    assert "Skipped unusable files: 4" in out
    assert sum(p in out for p, (stage, _) in expected.items() if stage == "scan") == 4


def test_decode_failure_in_a_subprocess_is_one_line(tiny_breakhis: Path,
                                                    tmp_path: Path) -> None:
    root = copy_data(tiny_breakhis, tmp_path / "data")
    bad = make_garbage_pixels_png(sample_paths(root)[7]["400X"])
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mpcs", "pretrain", "--data", str(root), "--out", str(run),
         "--quiet", *set_args("train.threads=1")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"mpcs pretrain: error: {bad}: truncated or corrupt image")
    assert proc.stderr.rstrip().endswith(line)


def test_cache_reports_bad_images_from_worker_threads(tiny_breakhis: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_data(tiny_breakhis, tmp_path / "data")
    paths = [s[m] for s in sample_paths(root)[:4] for m in MAGNIFICATIONS]
    first = make_garbage_pixels_png(paths[5])
    second = make_truncated_tiff(paths[11])
    paths[11] = second
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="garbage|corrupt") as err:  # first bad one, in order
        load_images(paths, 16, cache_dir=cache, progress=False, workers=4)
    assert str(err.value).startswith(f"{first}: ")
    assert not list(cache.iterdir()), "no cache entry (or temporary file) after an error"
    pixels, bad = load_images_with_report(paths, 16, cache_dir=cache, progress=False,
                                          workers=4, on_bad_image="skip")
    assert [p for p, _ in bad] == [str(first), str(second)]
    assert not np.asarray(pixels)[[5, 11]].any() and np.asarray(pixels)[0].any()
    # The entry remembers its bad images: no decoding again, same report or same error.
    def never(path: object, size: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr("mpcs.data.cache.decode_resized", never)
    assert load_images_with_report(paths, 16, cache_dir=cache, progress=False,
                                   on_bad_image="skip")[1] == bad
    with pytest.raises(DataError) as err:
        load_images(paths, 16, cache_dir=cache, progress=False)
    assert str(err.value).startswith(f"{first}: ")

    # Anything else a decoder throws in a worker thread is still a DataError naming the file.
    def boom(path: object, size: int) -> np.ndarray:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr("mpcs.data.cache.decode_resized", boom)
    with pytest.raises(DataError, match="cannot decode image .RuntimeError: decoder exploded"):
        load_images(paths, 16, cache_dir=None, progress=False, workers=4)


def test_stray_files_and_odd_valid_images_pretrain(tiny_breakhis: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    root = copy_data(tiny_breakhis, tmp_path / "data")
    samples = sample_paths(root)
    rgb = np.asarray(Image.open(samples[0]["40X"]).convert("RGB"))
    odd = {
        "grayscale": Image.fromarray(rgb[..., 0], "L"),
        "rgba": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]),
                                "RGBA"),
        "palette": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "16bit": Image.fromarray(rgb[..., 1].astype(np.uint16) * 257),
        "700x456": Image.fromarray(rgb).resize((700, 456)),
        "20x12": Image.fromarray(rgb).resize((20, 12)),
    }
    paths = []
    for i, image in enumerate(odd.values()):
        path = samples[i + 1][MAGNIFICATIONS[i % 4]]
        image.save(path)
        paths.append(path)
    assert Image.open(paths[3]).mode in ("I;16", "I")  # 16-bit grayscale PNG
    for folder in {p.parent for p in paths}:
        (folder / "Thumbs.db").write_bytes(b"\x00garbage")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder / "notes.txt").write_text("stained on Tuesday\n")
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(root), "--out", str(run), "--quiet", *set_args()])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["pair_samples"] == 12
    assert not (run / "skipped_images.csv").exists()
    pixels = load_images(paths, 32, cache_dir=None, progress=False)
    assert pixels.shape == (6, 3, 32, 32) and pixels.reshape(6, -1).max(axis=1).all()
    assert main(["inspect", "--data", str(root)]) == 0
    assert "48 images" in capsys.readouterr().out


# --------------------------------------------------------------------------- non-finite loss


@pytest.fixture(scope="module")
def medium_breakhis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 patients x 4 samples: 24 samples, 12 steps per epoch at batch 2."""
    out = tmp_path_factory.mktemp("synth-medium")
    return write_breakhis(out, SynthConfig(patients=6, samples_per_patient=4,
                                           image_size=(48, 32), seed=3), progress=False)


def poison_loss(monkeypatch: pytest.MonkeyPatch, calls: set[int], grads: bool = False) -> None:
    """Make the loss NaN (or, with ``grads``, finite with NaN gradients) at these calls
    (1-based; one call per training step)."""
    count = {"n": 0}

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
            return x.clone()

        @staticmethod
        def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
            return g * float("nan")

    class Poisoned(mpcs_method_mod.NTXentLoss):
        def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
            count["n"] += 1
            loss = super().forward(z1, z2)
            if count["n"] in calls:
                return NanGrad.apply(loss) if grads else loss * float("nan")
            return loss

    monkeypatch.setattr(mpcs_method_mod, "NTXentLoss", Poisoned)


@pytest.mark.parametrize("at, grads, needle", [
    (5, False, "non-finite loss (nan) at epoch 2/2, step 2/3 (global step 5)"),
    (2, False, "non-finite loss (nan) at epoch 1/2, step 2/3 (global step 2)"),
    (4, True, "non-finite gradients (loss "),
])
def test_nonfinite_stop_keeps_the_last_good_checkpoint(
        at: int, grads: bool, needle: str, tiny_breakhis: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    poison_loss(monkeypatch, {at}, grads)
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet",
                 *set_args("train.epochs=2", "train.checkpoint_every=1")])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and needle in line
    assert "no non-finite value reached the weights or a checkpoint" in line
    ckpts = sorted((run / "checkpoints").glob("*.pt"))
    if at <= 3:  # in epoch 1: nothing saved yet, and the message says so
        assert "No checkpoint was written yet" in line and ckpts == []
        return
    assert f"The last good checkpoint is {run / 'checkpoints' / 'last.pt'} (epoch 1)" in line
    assert [p.name for p in ckpts] == ["epoch_0001.pt", "last.pt"]
    last, first = load_checkpoint(ckpts[1]), load_checkpoint(ckpts[0])
    assert last["epoch"] == 1 and last["global_step"] == 3
    assert all(torch.equal(last["model"][k], first["model"][k]) for k in last["model"])
    assert all(tensors_finite(load_checkpoint(p)) for p in ckpts)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # The way on that the message offers: --resume with train.on_nonfinite=skip is accepted.
    monkeypatch.setattr(mpcs_method_mod, "NTXentLoss", NTXentLoss)
    assert main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet",
                 "--resume", *set_args("train.epochs=2", "train.checkpoint_every=1",
                                       "train.on_nonfinite=skip")]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 6


def test_nonfinite_skip_skips_the_optimiser_step(
        medium_breakhis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    poison_loss(monkeypatch, {3})
    run = tmp_path / "run"
    cfg = fast_cfg("train.batch_size=2", "train.on_nonfinite=skip")
    summary = pretrain(cfg, medium_breakhis, run, progress=False)
    assert summary["global_step"] == 12 and summary["skipped_steps"] == 1
    (record,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["skipped_steps"] == 1 and np.isfinite(record["loss"])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["skipped_steps"] == 1 and tensors_finite(state)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {11}
    assert "epoch 1/1, step 3/12 (global step 3): optimiser step skipped" in caplog.text


def test_nonfinite_skip_stops_past_ten_percent(medium_breakhis: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    poison_loss(monkeypatch, {3, 5})  # 2 of 12 steps: 17%
    cfg = fast_cfg("train.batch_size=2", "train.on_nonfinite=skip")
    with pytest.raises(NonFiniteLossError) as err:
        pretrain(cfg, medium_breakhis, tmp_path / "run", progress=False)
    assert "2 of the 12 steps of epoch 1 had a non-finite loss or gradient, more than 10%" \
        in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


# --------------------------------------------------------------------------- crash and resume


def _last_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return None


def test_killed_mid_epoch_resumes_to_the_same_weights(medium_breakhis: Path,
                                                      tmp_path: Path) -> None:
    extra = ("train.batch_size=2", "train.epochs=4", "train.threads=1",
             "train.checkpoint_every=10", "data.input_size=64")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mpcs", "pretrain", "--data", str(medium_breakhis),
           "--out", str(run), "--quiet", *set_args(*extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, last = run / "metrics.jsonl", run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    try:
        # Kill as soon as epoch 2 is recorded and its checkpoint is in place: mid-epoch 3.
        while time.monotonic() < deadline and proc.poll() is None:
            if (metrics.exists() and len(metrics.read_text().splitlines()) >= 2
                    and _last_epoch(last) == 2):
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2], \
        "the kill did not land in epoch 3"
    assert load_checkpoint(last)["epoch"] == 2
    # What a kill at other moments leaves: a temporary checkpoint, a recorded epoch whose
    # checkpoint was never written, a line cut short.
    (run / "checkpoints" / ".last.pt.killed.tmp").write_bytes(b"half a checkpoint")
    with open(metrics, "a") as f:
        f.write(json.dumps({"epoch": 3, "step": 36, "loss": 1.0}) + '\n{"epoch": 4, "st')

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]

    threads = torch.get_num_threads()
    try:  # the uninterrupted run, same settings (one thread) in this process
        straight = pretrain(fast_cfg(*extra), medium_breakhis, tmp_path / "straight",
                            progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 4 * 12
    for k in a["model"]:  # bit for bit: same machine, one thread, same settings
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_draws_and_losses(tiny_breakhis: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    real_views = pair_data_mod.PairData.views

    def recording(self, index, mag1, mag2):  # noqa: ANN001, ANN202
        draws.append((index.copy(), mag1.copy(), mag2.copy()))
        return real_views(self, index, mag1, mag2)

    monkeypatch.setattr(pair_data_mod.PairData, "views", recording)

    def run(name: str, seed: int) -> tuple[list, float]:
        draws.clear()
        pretrain(fast_cfg(f"seed={seed}"), tiny_breakhis, tmp_path / name, progress=False)
        loss = json.loads((tmp_path / name / "metrics.jsonl").read_text())["loss"]
        return list(draws), loss

    draws_a, loss_a = run("a", 0)
    draws_b, loss_b = run("b", 0)
    draws_c, loss_c = run("c", 1)
    assert len(draws_a) == 3
    assert all(np.array_equal(x, y) for da, db in zip(draws_a, draws_b, strict=True)
               for x, y in zip(da, db, strict=True))
    assert loss_a == loss_b
    assert loss_c != loss_a
    assert not all(np.array_equal(x, y) for da, dc in zip(draws_a, draws_c, strict=True)
                   for x, y in zip(da, dc, strict=True))


# --------------------------------------------------------------------------- output folder


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_folder_fails_before_training(
        where: str, tiny_breakhis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded images before checking the output folder")

    monkeypatch.setattr(pair_data_mod, "PairData", no_decoding)
    if where == "under_a_file":
        (tmp_path / "some_file.txt").write_text("x")
        out, needle = tmp_path / "some_file.txt" / "run", "is a file, not a folder"
    else:
        if not Path("/proc").is_dir():
            pytest.skip("no /proc")
        out, needle = Path("/proc/forbidden/run"), "/proc/forbidden/run"
    code = main(["pretrain", "--data", str(tiny_breakhis), "--out", str(out), "--quiet",
                 *set_args()])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and needle in line and str(out) in line


@pytest.mark.parametrize("patch", ["save_checkpoint", "torch.save"])
def test_disk_full_at_epoch_2_keeps_last_good_checkpoint(
        patch: str, tiny_breakhis: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(state: dict) -> bool:
        return state.get("epoch") == 2

    if patch == "save_checkpoint":
        real = records_mod.save_checkpoint

        def fake_save(state: dict, path: Path) -> None:
            if full(state):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(state, path)

        monkeypatch.setattr(records_mod, "save_checkpoint", fake_save)
    else:  # the real atomic writer, running out of space half-way through the file
        real_torch_save = torch.save

        def fake_torch_save(state: dict, f: object) -> None:
            if full(state):
                f.write(b"\x00" * 4096)  # type: ignore[attr-defined]
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_torch_save(state, f)

        monkeypatch.setattr(checkpoint_mod.torch, "save", fake_torch_save)
    run = tmp_path / "run"
    cfg = fast_cfg("train.epochs=3")
    with pytest.raises(OutputError) as err:
        pretrain(cfg, tiny_breakhis, run, progress=False)
    msg = str(err.value)
    assert "No space left on device" in msg and "end of epoch 2" in msg
    assert f"The last good checkpoint is {run / 'checkpoints' / 'last.pt'} (epoch 1)" in msg
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == 3 and tensors_finite(state)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]
    if patch == "torch.save":  # space freed: --resume finishes the run
        monkeypatch.setattr(checkpoint_mod.torch, "save", real_torch_save)
        summary = pretrain(cfg, tiny_breakhis, run, resume=True, progress=False)
        assert summary["global_step"] == 9
        epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]


# --------------------------------------------------------------------------- checkpoints


class Plain:
    """A custom class: a checkpoint holding its instance must not be unpickled."""


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - unpickling would create the marker folder
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("kind", ["custom_class", "reduce_to_call"])
def test_checkpoint_with_pickled_object_is_refused(
        kind: str, tiny_breakhis: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "code-was-run"
    run = tmp_path / "run"
    cfg = fast_cfg()
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    payload = Plain() if kind == "custom_class" else Evil(marker)
    torch.save({"model": {}, "config": cfg, "epoch": 1, "extra": payload}, last)
    with pytest.raises(CheckpointError):
        load_checkpoint(last)
    with pytest.raises(CheckpointError, match="refused: the file holds a pickled Python obj"):
        load_pretrained(last)
    code = main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet",
                 "--resume", *set_args()])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and str(last) in line and "weights_only=True" in line
    assert not marker.exists(), "code from the checkpoint was run"
