"""The one feature/prediction path (issue 17): background decoding, channels-last batches
and streamed tables give what the old per-image path gave; fast, light start of commands."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mpcs.api.embed import embed
from mpcs.api.predict import predict
from mpcs.cli import main
from mpcs.core.errors import ConfigError, DataError
from mpcs.core.tables import csv_text, read_csv
from mpcs.data.datasets.breakhis_names import BREAKHIS_FIELDS
from mpcs.data.images import list_images, load_rgb
from mpcs.data.transforms import eval_transform
from mpcs.engine.loading import (
    compute_features,
    load_finetuned,
    load_model,
    load_pretrained,
    read_state,
)
from mpcs.models import create_encoder
from mpcs.models.features import extract_features, iter_inputs, ramp, run_on_files
from tests.api.test_inference import make_finetune_ckpt, make_pretrain_ckpt

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
PREDICT_COLUMNS = ["path", "prob_benign", "prob_malignant", "prediction", *BREAKHIS_FIELDS]


@pytest.fixture(scope="module")
def pre_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrain_ckpt(tiny_breakhis, tmp_path_factory.mktemp("feat-pre"))


@pytest.fixture(scope="module")
def ft_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finetune_ckpt(tiny_breakhis, tmp_path_factory.mktemp("feat-ft"))


@pytest.fixture(scope="module")
def mixed(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """11 images of different sizes and modes (BreakHis names, a real-size 700x460, a
    grayscale and an RGBA one), in list_images order."""
    folder = tmp_path_factory.mktemp("mixed")
    for f in sorted(tiny_breakhis.rglob("*.png"))[::6][:8]:
        shutil.copy(f, folder / f.name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (460, 700, 3), np.uint8)).save(folder / "big.png")
    Image.fromarray(rng.integers(0, 255, (50, 90), np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (33, 41, 4), np.uint8), "RGBA").save(folder / "a.png")
    return list_images(folder)


def _old_input(file: Path, size: int, mean, std) -> torch.Tensor:
    """The per-image pre-processing of the old inference path (decode, then resize and
    normalise one image on the main thread)."""
    pixels = torch.from_numpy(np.asarray(load_rgb(file), dtype=np.uint8).copy())
    return eval_transform(pixels.permute(2, 0, 1)[None], size, tuple(mean), tuple(std))


def _old_outputs(fn, files: list[Path], size: int, mean, std) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([fn(_old_input(f, size, mean, std)).float().numpy()
                               for f in files])


# --------------------------------------------------------------------------- same outputs


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("projection", [False, True])
def test_features_equal_the_old_per_image_path(pre_ckpt: Path, mixed: list[Path],
                                               workers: int, projection: bool) -> None:
    loaded = load_model(pre_ckpt)
    kept, feats, skipped = compute_features(loaded, mixed, projection, batch_size=4,
                                            progress=False, workers=workers)
    assert kept == mixed and not skipped
    method = load_pretrained(pre_ckpt).eval()  # a fresh model: contiguous weights

    def fn(x: torch.Tensor) -> torch.Tensor:
        h = method.encoder(x)
        return method.head(h) if projection else h

    enc = method.encoder
    old = _old_outputs(fn, mixed, loaded.input_size, enc.mean, enc.std)
    assert feats.dtype == np.float32 and feats.shape == old.shape
    np.testing.assert_allclose(feats, old, rtol=1e-5, atol=1e-5)


def test_predictions_and_csv_equal_the_old_path(ft_ckpt: Path, mixed: list[Path],
                                                tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    df = predict(ft_ckpt, mixed, out, batch_size=3, progress=False, workers=2)
    assert list(df.columns) == PREDICT_COLUMNS
    model, _ = load_finetuned(ft_ckpt)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x).float(), dim=1)

    old = _old_outputs(fn, mixed, model.input_size, model.encoder.mean, model.encoder.std)
    np.testing.assert_allclose(df[["prob_benign", "prob_malignant"]].to_numpy(), old,
                               rtol=1e-5, atol=1e-6)
    assert df["path"].tolist() == [str(f) for f in mixed]
    # rows streamed batch by batch give the same text as the whole table written at once
    assert out.read_text() == csv_text(df, out)
    assert list(read_csv(out).columns) == PREDICT_COLUMNS


def test_streamed_embedding_table_equals_the_whole_table(pre_ckpt: Path, mixed: list[Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "emb.csv"
    df = embed(pre_ckpt, mixed, out, batch_size=4, progress=False)
    dim = load_model(pre_ckpt).encoder.num_features
    assert list(df.columns) == ["path", *BREAKHIS_FIELDS, *[f"f{i}" for i in range(dim)]]
    assert out.read_text() == csv_text(df, out)
    lean = embed(pre_ckpt, mixed, tmp_path / "lean.csv", batch_size=4, progress=False,
                 keep_features=False)  # the CLI's way: features only in the file
    assert list(lean.columns) == ["path", *BREAKHIS_FIELDS]
    assert (tmp_path / "lean.csv").read_text() == out.read_text()


def test_batch_size_and_workers_do_not_change_outputs(pre_ckpt: Path,
                                                      mixed: list[Path]) -> None:
    loaded = load_model(pre_ckpt)
    runs = [compute_features(loaded, mixed, batch_size=b, progress=False, workers=w)[1]
            for b, w in ((1, 0), (4, 1), (64, 3))]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-5, atol=1e-6)


def test_in_memory_extractor_equals_the_old_one(mixed: list[Path]) -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet18", weights="none").train()
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((40, 30)))
                       .transpose(2, 0, 1) for f in mixed])
    feats = extract_features(enc, pixels, 32, batch_size=4)
    assert enc.training  # mode restored
    enc.eval()
    with torch.no_grad():
        old = enc(eval_transform(torch.from_numpy(pixels), 32, enc.mean, enc.std)).numpy()
    np.testing.assert_allclose(feats, old, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the pipeline


def test_unreadable_image_fails_in_order_or_is_skipped(pre_ckpt: Path, mixed: list[Path],
                                                       tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50)
    files = [*mixed[:5], bad, *mixed[5:]]
    loaded = load_model(pre_ckpt)
    seen: list[Path] = []
    with pytest.raises(DataError, match="bad.png"):
        for batch in run_on_files(loaded.encoder, files, 32, loaded.encoder.mean,
                                  loaded.encoder.std, batch_size=2, workers=2):
            seen += batch.files
    assert seen == mixed[:5]  # batches ([1], [2], [2]) before the bad file's, in order
    with pytest.raises(DataError, match="bad.png"):
        embed(pre_ckpt, files, tmp_path / "e.csv", batch_size=2, progress=False)
    assert not list(tmp_path.glob("*e.csv*"))  # no partial table, no temporary left
    with caplog.at_level(logging.WARNING):
        kept, feats, skipped = compute_features(loaded, files, batch_size=2, skip_bad=True,
                                                progress=False, workers=2)
    assert kept == mixed and len(feats) == len(mixed) and skipped[0][0] == str(bad)
    assert any("skipping unreadable image" in r.getMessage() for r in caplog.records)


def test_iter_inputs_keeps_images_and_checks_settings(mixed: list[Path]) -> None:
    batches = list(iter_inputs(mixed, 16, (0.5,) * 3, (0.5,) * 3, batch_size=4,
                               keep_images=True))
    # the first batches are smaller, so that the model starts while the rest is decoded
    assert [len(b.files) for b in batches] == [1, 2, 4, 4]
    assert [ramp(64, k) for k in range(5)] == [8, 16, 32, 64, 64] and ramp(3, 0) == 1
    b = batches[2]
    assert b.inputs is not None and b.inputs.shape == (4, 3, 16, 16)
    assert b.inputs.is_contiguous(memory_format=torch.channels_last)
    assert [im.size for im in b.images] == [Image.open(f).size for f in b.files]
    with pytest.raises(ConfigError, match="batch_size"):
        next(iter_inputs(mixed, 16, (0.5,) * 3, (0.5,) * 3, batch_size=0))
    with pytest.raises(ConfigError, match="workers"):
        next(iter_inputs(mixed, 16, (0.5,) * 3, (0.5,) * 3, workers=-1))


def test_background_decoding_leaves_the_callers_threads(mixed: list[Path]) -> None:
    before = torch.get_num_threads()
    list(iter_inputs(mixed, 16, (0.5,) * 3, (0.5,) * 3, batch_size=2, workers=2))
    assert torch.get_num_threads() == before


def test_checkpoint_is_read_memory_mapped(ft_ckpt: Path, tmp_path: Path) -> None:
    state = read_state(ft_ckpt)
    assert state["kind"] == "mpcs-finetune"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="junk.pt"):
        read_state(junk)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_amp_setting_runs_on_the_cpu(ft_ckpt: Path, mixed: list[Path], tmp_path: Path,
                                     amp: str) -> None:
    df = predict(ft_ckpt, mixed[:3], tmp_path / "p.csv", progress=False, amp=amp)
    np.testing.assert_allclose(df["prob_benign"] + df["prob_malignant"], 1.0, atol=1e-5)


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--device", "cuda", "CUDA is not available"), ("--device", "tpu9", "unknown device"),
    ("--workers", "-1", "workers must be >= 0"), ("--batch-size", "0", "batch_size")])
def test_bad_settings_are_one_line_and_leave_no_file(ft_ckpt: Path, mixed: list[Path],
                                                     tmp_path: Path, flag: str, value: str,
                                                     says: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "p.csv"
    code = main(["predict", "--checkpoint", str(ft_ckpt), "--images", str(mixed[0]),
                 "--out", str(out), "--quiet", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and err[0].startswith("mpcs predict")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- start-up


def _modules_after(code: str) -> list[str]:
    heavy = ("sklearn", "scipy", "matplotlib", "mpcs.engine.pretrain", "mpcs.engine.finetune",
             "mpcs.evaluation", "mpcs.viz", "torch")
    script = (f"import sys\n{code}\n"
              f"print(__import__('json').dumps([m for m in {heavy!r} if m in sys.modules] + "
              "[__import__('os').environ.get('OMP_WAIT_POLICY')]))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch() -> None:
    assert _modules_after("from mpcs.cli import build_parser; build_parser()") == [None]


def test_predict_imports_only_what_it_needs(ft_ckpt: Path, mixed: list[Path],
                                            tmp_path: Path) -> None:
    out = tmp_path / "one.csv"
    code = ("from mpcs.cli import main\n"
            f"assert main(['predict', '--checkpoint', {str(ft_ckpt)!r}, '--images', "
            f"{str(mixed[0])!r}, '--out', {str(out)!r}, '--quiet']) == 0")
    # OpenMP's idle threads sleep while the decoding thread works (set before torch loads)
    assert _modules_after(code) == ["torch", "PASSIVE"]
    assert len(pd.read_csv(out)) == 1
