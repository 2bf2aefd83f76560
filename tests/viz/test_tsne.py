"""t-SNE maps: one PNG per magnification and one for all, features saved once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpcs.core.errors import ConfigError
from mpcs.viz.tsne import tsne_plot
from tests.api.test_inference import make_finetune_ckpt, make_pretrain_ckpt

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pre_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrain_ckpt(tiny_breakhis, tmp_path_factory.mktemp("tsne-pre"))


@pytest.mark.parametrize("features", ["backbone", "projection"])
def test_tsne_writes_one_png_per_magnification_and_all(pre_ckpt: Path, tiny_breakhis: Path,
                                                      tmp_path: Path, features: str) -> None:
    out = tmp_path / "tsne"
    pngs = tsne_plot(pre_ckpt, tiny_breakhis, out, features=features, perplexity=30,
                     progress=False)
    tsne = sorted(p.name for p in pngs if p.name.startswith("tsne_"))
    assert tsne == sorted(["tsne_all.png", "tsne_40X.png", "tsne_100X.png", "tsne_200X.png",
                           "tsne_400X.png"])
    for p in pngs:
        assert p.is_file()
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    n = len(list(tiny_breakhis.rglob("*.png")))
    saved = np.load(out / "features.npz")
    assert saved["features"].shape[0] == len(saved["paths"]) == len(saved["labels"]) == n
    assert np.isfinite(saved["features"]).all()
    assert set(saved["labels"].tolist()) == {"benign", "malignant"}
    assert saved["features"].shape[1] == (512 if features == "backbone" else 16)


def test_tsne_projection_needs_pretraining_checkpoint(tiny_breakhis: Path,
                                                      tmp_path: Path) -> None:
    ft = make_finetune_ckpt(tiny_breakhis, tmp_path / "ft")
    with pytest.raises(ConfigError, match="projection"):
        tsne_plot(ft, tiny_breakhis, tmp_path / "t", features="projection", progress=False)


def test_tsne_rejects_unknown_feature_kind(pre_ckpt: Path, tiny_breakhis: Path,
                                           tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backbone"):
        tsne_plot(pre_ckpt, tiny_breakhis, tmp_path / "t", features="logits", progress=False)
