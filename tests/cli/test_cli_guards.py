"""Guards of issue 14 part C: settings, paths and sizes refused in one line before any work;
output pipes that close early; t-SNE's method on small sets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.manifold
from PIL import Image

import mpcs.data.synth.breakhis as synth_module
import mpcs.data.synth.transfer as synth_transfer
import mpcs.evaluation.demo as demo
from mpcs.cli import main
from mpcs.config import FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS, load_preset, resolve
from mpcs.core.errors import ConfigError
from mpcs.data.synth.breakhis import SynthConfig, parse_image_size
from mpcs.data.synth.transfer import write_bach, write_bcc
from mpcs.viz import tsne
from tests.api.test_inference import make_pretrain_ckpt

MAX_IMAGE_SIDE = 8192  # the largest synthetic image side, named in the message


def _float_keys(defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings whose default is a float."""
    out: list[str] = []
    for key, value in defaults.items():
        if isinstance(value, dict):
            out += _float_keys(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            out.append(f"{prefix}{key}")
    return out


def _one_error_line(err: str, command: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mpcs {command}: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- 9: threads, device


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
@pytest.mark.parametrize(("override", "key"), [
    ("train.threads=-3", "train.threads"), ("train.device=tpu", "train.device"),
    ("train.device=cuda:x", "train.device"), ("train.device=cuda:", "train.device"),
    ("train.device=gpu", "train.device")])
def test_threads_and_device_are_checked_when_resolved(kind: str, override: str,
                                                      key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        resolve(overrides=[override], kind=kind)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
@pytest.mark.parametrize("override", ["train.threads=0", "train.threads=2", "train.device=auto",
                                      "train.device=cpu", "train.device=cuda",
                                      "train.device=cuda:1", "train.device=mps"])
def test_valid_threads_and_devices_resolve(kind: str, override: str) -> None:
    key, value = override.split("=")
    cfg = resolve(overrides=[override], kind=kind)
    assert str(cfg["train"][key.split(".")[1]]) == value


def test_pretrain_with_negative_threads_stops_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(tmp_path / "no-data"), "--out", str(run), "--quiet",
                 "--set", "train.threads=-3"])
    assert code == 2
    assert "train.threads" in _one_error_line(capsys.readouterr().err, "pretrain")
    assert not run.exists()


# --------------------------------------------------------------------------- 18: finite floats


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize(("kind", "key"),
                         [("pretrain", k) for k in _float_keys(PRETRAIN_DEFAULTS)]
                         + [("finetune", k) for k in _float_keys(FINETUNE_DEFAULTS)])
def test_every_float_setting_must_be_finite(kind: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' must be a finite number"):
        resolve(overrides=[f"{key}={value}"], kind=kind)


@pytest.mark.parametrize(("kind", "override", "key"), [
    ("pretrain", "wsi.assume_mpp=.inf", "wsi.assume_mpp"),     # a float setting that may be null
    ("pretrain", "optim.lr_biases=.nan", "optim.lr_biases"),
    ("pretrain", "pairs.scale_range=[1, .inf]", "pairs.scale_range"),  # inside a list
    ("pretrain", "ssl.vicreg_weights=[25, .inf, 1]", "ssl.vicreg_weights"),
    ("finetune", "augment.crop_ratio=[0.75, .inf]", "augment.crop_ratio"),
    ("experiment", "transfer.val_fraction=.nan", "transfer.val_fraction")])
def test_non_finite_values_are_refused_in_nullable_keys_and_lists(kind: str, override: str,
                                                                  key: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' must be a finite number"):
        resolve(overrides=[override], kind=kind)


def test_infinite_temperature_and_lr_are_refused_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for override in ("loss.temperature=.inf", "optim.lr=.inf"):
        code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--quiet", "--set", override])
        assert code == 2
        line = _one_error_line(capsys.readouterr().err, "pretrain")
        assert override.split("=")[0] in line and "finite" in line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 15: preset names


@pytest.mark.parametrize("name", ["../../x", "../presets/cpu-small", "sub/cpu-small",
                                  "cpu-small.yaml", "..", "/etc/passwd"])
def test_a_preset_is_a_plain_name(name: str) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_preset(name)


def test_a_yaml_file_outside_the_presets_is_not_loaded_as_a_preset(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("train: {epochs: 3}\n")
    for name in (str(tmp_path / "outside"), f"../../../../../../../..{tmp_path}/outside"):
        with pytest.raises(ConfigError, match="--config"):
            load_preset(name)
    assert resolve(config_file=outside)["train"]["epochs"] == 3


def test_preset_path_on_the_command_line_points_to_config(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine.yaml").write_text("train: {epochs: 3}\n")
    code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--preset", str(tmp_path / "mine")])
    assert code == 2
    assert "--config" in _one_error_line(capsys.readouterr().err, "pretrain")


# --------------------------------------------------------------------------- 17: demo order


@pytest.mark.parametrize(("override", "needle"), [
    ("foldz=2", "did you mean 'folds'"),
    ("pretrain_overrides=[train.epochz=20]", "pretrain_overrides: unknown config key"),
    ("pretrain_overrides=[5]", "pretrain_overrides must be a list of key=value"),
    ("finetune_overrides=[linear.lr=.inf]", "'linear.lr' must be a finite number")])
def test_demo_checks_its_settings_before_generating_data(
        override: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    calls: list[str] = []

    def no_work(*args: Any, **kwargs: Any) -> None:
        calls.append("work")
        raise AssertionError("the demo started work before checking its settings")

    monkeypatch.setattr(demo, "write_breakhis", no_work)
    monkeypatch.setattr(demo, "run_experiment", no_work)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--set", override]) == 2
    assert needle in _one_error_line(capsys.readouterr().err, "demo")
    assert calls == [] and not out.exists()


# --------------------------------------------------------------------------- 11: synth sizes


@pytest.mark.parametrize("size", [(100000, 100000), (MAX_IMAGE_SIDE + 1, 16),
                                  (16, MAX_IMAGE_SIDE + 1)])
def test_synthetic_image_size_is_bounded(size: tuple[int, int], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"at most {MAX_IMAGE_SIDE}"):
        SynthConfig(image_size=size).validate()
    for write in (write_bach, write_bcc):
        with pytest.raises(ConfigError, match=f"at most {MAX_IMAGE_SIDE}"):
            write(tmp_path, images_per_class=1, image_size=size, progress=False)
    with pytest.raises(ConfigError, match=f"at most {MAX_IMAGE_SIDE}"):
        parse_image_size(f"{size[0]}x{size[1]}")
    assert not list(tmp_path.iterdir())


def test_largest_synthetic_image_size_is_accepted() -> None:
    SynthConfig(image_size=(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)).validate()
    assert parse_image_size(f"{MAX_IMAGE_SIDE}x16") == (MAX_IMAGE_SIDE, 16)
    assert MAX_IMAGE_SIDE >= 2048  # BACH's own size fits


@pytest.mark.parametrize("dataset", ["breakhis", "bach", "bcc"])
def test_synth_command_refuses_huge_images_in_one_line(
        dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("synth started writing images of an unbounded size")

    for module, name in ((synth_module, "write_breakhis"), (synth_transfer, "write_bach"),
                         (synth_transfer, "write_bcc")):
        monkeypatch.setattr(module, name, no_work)
    code = main(["synth", "--out", str(tmp_path / "s"), "--dataset", dataset, "--quiet",
                 "--image-size", "100000x100000"])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "synth")
    assert "100000x100000" in line and str(MAX_IMAGE_SIDE) in line


# --------------------------------------------------------------------------- 10 and messages


@pytest.fixture(scope="module")
def ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrain_ckpt(tiny_breakhis, tmp_path_factory.mktemp("guards"))


def test_export_to_an_existing_file_is_refused_and_the_file_kept(
        ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "encoder.safetensors"
    target.write_bytes(b"the user's file")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(target)]) == 2
    line = _one_error_line(capsys.readouterr().err, "export")
    assert str(target) in line and "folder" in line
    assert target.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.safetensors"]
    # under a file: no folder can be made there either
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(target / "sub")]) == 2
    assert str(target) in _one_error_line(capsys.readouterr().err, "export")
    assert target.read_bytes() == b"the user's file"


def test_export_into_a_new_or_existing_folder_still_works(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    for out in (tmp_path / "new" / "deeper", tmp_path / "existing"):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
        assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md"}


@pytest.mark.parametrize("command", ["embed", "predict", "gradcam", "export"])
def test_a_folder_given_as_checkpoint_says_it_is_a_folder(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    out = tmp_path / ("o.csv" if command in ("embed", "predict") else "o")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    args = ["--images", str(tmp_path / "a.png")] if command != "export" else []
    assert main([command, "--checkpoint", str(run), "--out", str(out), *args]) == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert "is a folder" in line and "not found" not in line
    assert str(run / "checkpoints" / "last.pt") in line  # the file it probably meant
    assert not out.exists()


def test_report_of_a_missing_folder_says_folder_not_found(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == 2
    line = _one_error_line(capsys.readouterr().err, "report")
    assert f"{missing}: folder not found" in line and "experiment cell" not in line
    assert not missing.exists()
    # an existing folder without results still explains what is missing
    missing.mkdir()
    assert main(["report", str(missing)]) == 2
    assert "no finished experiment cell" in capsys.readouterr().err


# --------------------------------------------------------------------------- 12: broken pipe


class _ClosedPipe:
    """A stdout whose reader has gone away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_main_exits_quietly_when_stdout_is_closed(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["presets"]) == 1
    assert capsys.readouterr().err == ""


def test_command_piped_into_a_reader_that_closes_early_prints_no_traceback() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mpcs", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`: gone before mpcs writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == "", err


# --------------------------------------------------------------------------- 19: t-SNE method


class _FakeTSNE:
    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.made.append(kwargs)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 2))


@pytest.mark.parametrize(("n", "method"), [(5, "exact"), (64, "exact"), (999, "exact"),
                                           (1000, "barnes_hut"), (20000, "barnes_hut")])
def test_tsne_is_exact_on_small_sets_and_barnes_hut_on_large(
        n: int, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sklearn.manifold, "TSNE", _FakeTSNE)
    _FakeTSNE.made.clear()
    xy = tsne.embed_2d(np.zeros((n, 8), np.float32), perplexity=30, seed=0)
    assert xy.shape == (n, 2)
    assert [kw.get("method", "barnes_hut") for kw in _FakeTSNE.made] == [method]
    assert _FakeTSNE.made[0]["perplexity"] == min(30, n - 1)
