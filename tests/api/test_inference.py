"""Inference on new images: embeddings, predictions with patient aggregation, plain-timm export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mpcs.api.embed import embed
from mpcs.api.export import export_encoder
from mpcs.api.predict import patient_table, patients_path, predict
from mpcs.config import resolve
from mpcs.core.errors import CheckpointError, ConfigError, DataError
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.datasets.breakhis_names import BREAKHIS_FIELDS
from mpcs.data.images import list_images, load_rgb
from mpcs.data.transforms import eval_transform
from mpcs.engine.finetune import finetune
from mpcs.engine.loading import load_encoder_from_checkpoint
from mpcs.engine.pretrain import pretrain
from tests.conftest import TINY_OVERRIDES

torch.set_num_threads(1)

FT_OVERRIDES = ["data.input_size=32", "train.epochs=1", "train.batch_size=4", "train.threads=1",
                "data.use_cache=false"]


def make_pretrain_ckpt(data: Path, out: Path) -> Path:
    """A 1-epoch tiny pre-training run on ``data``; returns its last.pt."""
    torch.set_num_threads(1)
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "data.use_cache=false"])
    result = pretrain(cfg, data, out / "run", progress=False)
    return Path(result["checkpoint"])


def make_finetune_ckpt(data: Path, out: Path) -> Path:
    """A 1-epoch tiny fine-tuning run (random init) on ``data``; returns its best.pt."""
    torch.set_num_threads(1)
    manifest = scan_breakhis(data)
    benign = sorted(manifest.loc[manifest["label"] == "benign", "patient_id"].unique())
    malignant = sorted(manifest.loc[manifest["label"] == "malignant", "patient_id"].unique())
    split = {"train": [benign[0], malignant[0]], "val": [benign[1]], "test": [malignant[1]]}
    train, val, test = (manifest[manifest["patient_id"].isin(split[k])].reset_index(drop=True)
                        for k in ("train", "val", "test"))
    cfg = resolve(preset="finetune-cpu-small", kind="finetune", overrides=FT_OVERRIDES)
    finetune(cfg, train, val, test, out / "run", init="none", progress=False)
    best = out / "run" / "best.pt"
    assert best.is_file()
    return best


@pytest.fixture(scope="module")
def pretrain_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrain_ckpt(tiny_breakhis, tmp_path_factory.mktemp("inf-pre"))


@pytest.fixture(scope="module")
def finetune_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finetune_ckpt(tiny_breakhis, tmp_path_factory.mktemp("inf-ft"))


@pytest.fixture
def few_images(tiny_breakhis: Path, tmp_path: Path) -> Path:
    """A folder with 6 BreakHis images (mixed magnifications), a stray note and a subfolder."""
    src = sorted(tiny_breakhis.rglob("*.png"))
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(src[::8][:6]):
        shutil.copy(f, (folder / "sub" if i % 2 else folder) / f.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "Thumbs.db").write_bytes(b"\0\1")
    return folder


def _corrupt_png(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return path


# --------------------------------------------------------------------------- list_images


def test_list_images_recurses_and_ignores_stray_files(few_images: Path) -> None:
    found = list_images(few_images)
    assert len(found) == 6
    assert all(p.suffix == ".png" for p in found)
    explicit = list_images([found[0], found[1]])
    assert explicit == [found[0], found[1]]


def test_list_images_nothing_found_says_where(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match=str(tmp_path)):
        list_images(tmp_path)
    with pytest.raises(DataError, match="missing.png"):
        list_images([tmp_path / "missing.png"])


# --------------------------------------------------------------------------- embed


def test_embed_rows_columns_and_finite_features(pretrain_ckpt: Path, few_images: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "emb.csv"
    df = embed(pretrain_ckpt, few_images, out, batch_size=4, progress=False)
    dim = load_encoder_from_checkpoint(pretrain_ckpt).num_features
    assert len(df) == 6
    assert list(df.columns[:6]) == ["path", *BREAKHIS_FIELDS]
    assert list(df.columns[6:]) == [f"f{i}" for i in range(dim)]
    feats = df[[f"f{i}" for i in range(dim)]].to_numpy()
    assert np.isfinite(feats).all() and feats.std() > 0
    assert df["label"].isin(["benign", "malignant"]).all()
    assert set(df["magnification"]) <= {"40X", "100X", "200X", "400X"}
    back = pd.read_csv(out)
    assert back.shape == df.shape
    np.testing.assert_allclose(back[[f"f{i}" for i in range(dim)]].to_numpy(), feats,
                               rtol=1e-5, atol=1e-6)


def test_embed_with_finetuned_checkpoint_and_unparsed_name(finetune_ckpt: Path,
                                                           few_images: Path,
                                                           tmp_path: Path) -> None:
    other = tmp_path / "slide_17.png"
    shutil.copy(next(few_images.glob("*.png")), other)
    df = embed(finetune_ckpt, [other, *sorted(few_images.glob("*.png"))], tmp_path / "e.csv",
               progress=False)
    assert len(df) == 4
    row = df[df["path"] == str(other)].iloc[0]
    assert all(pd.isna(row[c]) for c in BREAKHIS_FIELDS)


def test_embed_skip_bad_and_error_mode(pretrain_ckpt: Path, few_images: Path,
                                       tmp_path: Path) -> None:
    bad = _corrupt_png(few_images / "SOB_B_A-14-99999-40-001.png")
    with pytest.raises(DataError, match=bad.name):
        embed(pretrain_ckpt, few_images, tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.csv").exists()
    df = embed(pretrain_ckpt, few_images, tmp_path / "y.csv", skip_bad=True, progress=False)
    assert len(df) == 6
    assert df.attrs["skipped"] == [str(bad)]
    assert str(bad) not in set(df["path"])


def test_embed_output_format_checks(pretrain_ckpt: Path, few_images: Path,
                                    tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=".csv"):
        embed(pretrain_ckpt, few_images, tmp_path / "x.json", progress=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pyarrow.*csv"):
            embed(pretrain_ckpt, few_images, tmp_path / "x.parquet", progress=False)
    else:
        df = embed(pretrain_ckpt, few_images, tmp_path / "x.parquet", progress=False)
        assert pd.read_parquet(tmp_path / "x.parquet").shape == df.shape


def test_load_encoder_rejects_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    torch.save({"hello": torch.zeros(1)}, junk)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_encoder_from_checkpoint(junk)
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_encoder_from_checkpoint(tmp_path / "nope.pt")


# --------------------------------------------------------------------------- predict


def test_predict_rows_probabilities_and_patients(finetune_ckpt: Path, few_images: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    df = predict(finetune_ckpt, few_images, out, batch_size=4, progress=False)
    assert len(df) == 6
    assert {"path", "prob_benign", "prob_malignant", "prediction", *BREAKHIS_FIELDS} <= set(
        df.columns)
    np.testing.assert_allclose(df["prob_benign"] + df["prob_malignant"], 1.0, atol=1e-5)
    expected = np.where(df["prob_malignant"] > df["prob_benign"], "malignant", "benign")
    assert (df["prediction"] == expected).all()
    assert pd.read_csv(out).shape == df.shape

    patients = pd.read_csv(patients_path(out))
    assert patients_path(out).name == "pred_patients.csv"
    assert sorted(patients["patient_id"]) == sorted(df["patient_id"].unique())
    for _, p in patients.iterrows():
        rows = df[df["patient_id"] == p["patient_id"]]
        assert p["n_images"] == len(rows)
        assert p["mean_prob_malignant"] == pytest.approx(rows["prob_malignant"].mean())
        votes = (rows["prediction"] == "malignant").sum()
        if votes * 2 != len(rows):
            assert p["prediction"] == ("malignant" if votes * 2 > len(rows) else "benign")


def test_patient_table_by_hand() -> None:
    pred = pd.DataFrame({
        "path": list("abcdefg"),
        "prob_benign": [0.1, 0.2, 0.7, 0.6, 0.3, 0.45, 0.9],
        "prob_malignant": [0.9, 0.8, 0.3, 0.4, 0.7, 0.55, 0.1],
        "prediction": ["malignant", "malignant", "benign", "benign", "malignant", "malignant",
                       "benign"],
        "patient_id": ["p1", "p1", "p1", "p2", "p2", None, "p3"],
        "label": ["malignant"] * 3 + ["benign"] * 2 + [None, "benign"],
    })
    t = patient_table(pred).set_index("patient_id")
    assert list(t.index) == ["p1", "p2", "p3"]  # the unparsed row is left out
    assert t.loc["p1", "n_images"] == 3 and t.loc["p1", "prediction"] == "malignant"
    assert t.loc["p1", "mean_prob_malignant"] == pytest.approx((0.9 + 0.8 + 0.3) / 3)
    # a 1-1 tie is broken by the mean malignant probability (0.55 >= 0.5)
    assert t.loc["p2", "prediction"] == "malignant"
    assert t.loc["p3", "prediction"] == "benign" and t.loc["p3", "n_malignant"] == 0


def test_predict_needs_finetuned_checkpoint(pretrain_ckpt: Path, few_images: Path,
                                            tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="needs a fine-tuned checkpoint"):
        predict(pretrain_ckpt, few_images, tmp_path / "p.csv", progress=False)


def test_predict_skip_bad(finetune_ckpt: Path, few_images: Path, tmp_path: Path) -> None:
    bad = _corrupt_png(few_images / "broken.png")
    with pytest.raises(DataError, match="broken.png"):
        predict(finetune_ckpt, few_images, tmp_path / "p.csv", progress=False)
    df = predict(finetune_ckpt, few_images, tmp_path / "p.csv", skip_bad=True, progress=False)
    assert len(df) == 6 and df.attrs["skipped"] == [str(bad)]


def test_predict_labels_bcc_and_bach_names_but_not_others(finetune_ckpt: Path,
                                                           few_images: Path,
                                                           tmp_path: Path) -> None:
    png = next(few_images.glob("*.png"))
    named = {tmp_path / "ytma12_010804_malignant3_ccd.tif": "malignant",  # UCSB BCC
             tmp_path / "Photos" / "InSitu" / "is012.tif": "InSitu",      # BACH
             tmp_path / "Benign" / "is001.tif": None,  # a BACH name in another class folder
             tmp_path / "tile_benign_3.tif": None}
    for path in named:
        path.parent.mkdir(parents=True, exist_ok=True)
        load_rgb(png).save(path)
    df = predict(finetune_ckpt, list(named), tmp_path / "p.csv", progress=False)
    written = pd.read_csv(tmp_path / "p.csv")
    for frame in (df, written):
        got = dict(zip(frame["path"], frame["label"], strict=True))
        assert {Path(k): (None if pd.isna(v) else v) for k, v in got.items()} == named
        assert frame["patient_id"].isna().all()  # no patient in these names
    assert not patients_path(tmp_path / "p.csv").exists()


def test_predict_on_real_breakhis_samples(finetune_ckpt: Path, shared_breakhis: Path,
                                          tmp_path: Path) -> None:
    n = len(list_images(shared_breakhis))
    df = predict(finetune_ckpt, shared_breakhis, tmp_path / "real.csv", batch_size=16,
                 progress=False)
    assert len(df) == n == 87
    assert df["patient_id"].notna().all()
    assert np.isfinite(df[["prob_benign", "prob_malignant"]].to_numpy()).all()
    patients = pd.read_csv(tmp_path / "real_patients.csv")
    assert patients["n_images"].sum() == 87


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("which", ["pretrain", "finetune"])
def test_export_loads_in_plain_timm_with_same_features(which: str, request, few_images: Path,
                                                       tmp_path: Path) -> None:
    import safetensors.torch
    import timm

    ckpt = request.getfixturevalue(f"{which}_ckpt")
    out = export_encoder(ckpt, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    assert {"timm_name", "timm_kwargs", "num_features", "input_size", "mean", "std",
            "source_checkpoint"} <= set(cfg)
    assert cfg["input_size"] == 32
    net = timm.create_model(cfg["timm_name"], pretrained=False, num_classes=0,
                            **cfg["timm_kwargs"])
    net.load_state_dict(safetensors.torch.load_file(out / "model.safetensors"))
    net.eval()

    image = sorted(few_images.glob("*.png"))[0]
    pixels = torch.from_numpy(np.asarray(load_rgb(image)).copy()).permute(2, 0, 1)[None]
    x = eval_transform(pixels, cfg["input_size"], tuple(cfg["mean"]), tuple(cfg["std"]))
    with torch.no_grad():
        plain = net(x).numpy()[0]
    df = embed(ckpt, [image], tmp_path / "one.csv", progress=False)
    ours = df[[f"f{i}" for i in range(cfg["num_features"])]].to_numpy()[0]
    assert plain.shape == (cfg["num_features"],)
    np.testing.assert_allclose(ours, plain, atol=1e-5, rtol=1e-5)
