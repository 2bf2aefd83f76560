"""``mpcs export`` in timm's hub layout: ``timm.create_model("local-dir:...", pretrained=True)``
loads it offline with the features of ``mpcs embed``; config.json as timm's ``save_for_hf``
writes it; the README.md model card."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.models._hub import save_config_for_hf

from mpcs.api.embed import embed
from mpcs.api.export import export_encoder
from mpcs.api.hub import model_card
from mpcs.cli import main
from mpcs.engine.loading import load_model
from mpcs.models.features import read_model_input
from tests.api.test_inference import make_finetune_ckpt, make_pretrain_ckpt

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pretrain_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrain_ckpt(tiny_breakhis, tmp_path_factory.mktemp("hub-pre"))


@pytest.fixture(scope="module")
def finetune_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finetune_ckpt(tiny_breakhis, tmp_path_factory.mktemp("hub-ft"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: the Hugging Face hub offline and urllib failing loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def _images(tiny_breakhis: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = sorted(tiny_breakhis.rglob("*.png"))[::9][:5]
    for f in files:
        shutil.copy(f, folder / f.name)
    return sorted(folder.glob("*.png"))


@pytest.mark.parametrize("which", ["pretrain", "finetune"])
def test_local_dir_gives_the_features_of_embed(which: str, request: pytest.FixtureRequest,
                                               tiny_breakhis: Path, tmp_path: Path,
                                               offline: None) -> None:
    ckpt = request.getfixturevalue(f"{which}_ckpt")
    out = export_encoder(ckpt, tmp_path / "export")
    net = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    images = _images(tiny_breakhis, tmp_path)
    df = embed(ckpt, images, tmp_path / "emb.csv", progress=False)
    ours = df[[c for c in df.columns if c.startswith("f") and c[1:].isdigit()]].to_numpy()
    cfg = net.pretrained_cfg
    x = torch.cat([read_model_input(p, cfg["input_size"][-1], cfg["mean"], cfg["std"])[1]
                   for p in images])
    with torch.no_grad():
        plain = net(x).numpy()
    assert plain.shape == ours.shape == (len(images), net.num_features)
    np.testing.assert_allclose(plain, ours, atol=1e-5, rtol=1e-5)
    # the same export read without the num_classes argument, and with a new head
    bare = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert bare.num_classes == 0
    head = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=3).eval()
    with torch.no_grad():
        pooled = head.forward_head(head.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(pooled, ours, atol=1e-5, rtol=1e-5)


def test_config_has_timms_layout(pretrain_ckpt: Path, tmp_path: Path) -> None:
    out = export_encoder(pretrain_ckpt, tmp_path / "export")
    ours = json.loads((out / "config.json").read_text())
    enc = load_model(pretrain_ckpt).encoder
    save_config_for_hf(enc.model, str(tmp_path / "timm.json"))  # timm's own writer
    theirs = json.loads((tmp_path / "timm.json").read_text())
    assert set(theirs) <= set(ours)  # architecture, num_classes, num_features, model_args, ...
    assert ours["architecture"] == theirs["architecture"] == enc.timm_name
    assert ours["num_features"] == theirs["num_features"] == enc.num_features
    assert theirs["model_args"].items() <= ours["model_args"].items()
    assert ours["global_pool"] == theirs["global_pool"] == "avg"
    for key in ("first_conv", "classifier", "fixed_input_size", "custom_load"):
        assert ours["pretrained_cfg"][key] == theirs["pretrained_cfg"][key]
    pcfg = ours["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["num_classes"] == 0
    assert pcfg["mean"] == list(enc.mean) and pcfg["std"] == list(enc.std)
    assert (pcfg["crop_mode"], pcfg["crop_pct"], pcfg["interpolation"]) == ("squash", 1.0,
                                                                           "bilinear")
    # mpcs's own keys stay for existing users
    assert {"timm_name", "timm_kwargs", "input_size", "mean", "std", "source_checkpoint"} <= \
        set(ours)


def test_timm_preprocessing_is_close_to_embed(pretrain_ckpt: Path, tiny_breakhis: Path,
                                              tmp_path: Path, offline: None) -> None:
    """timm's own transform from the exported pretrained_cfg (PIL resize) nearly matches."""
    from PIL import Image

    out = export_encoder(pretrain_ckpt, tmp_path / "export")
    net = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    data_cfg = timm.data.resolve_data_config({}, model=net)
    assert data_cfg["input_size"] == (3, 32, 32) and data_cfg["crop_pct"] == 1.0
    transform = timm.data.create_transform(**data_cfg)
    images = _images(tiny_breakhis, tmp_path)
    with torch.no_grad():
        feats = net(torch.stack([transform(Image.open(p).convert("RGB")) for p in images]))
    ours = embed(pretrain_ckpt, images, tmp_path / "e.csv", progress=False)
    ours = torch.tensor(ours[[f"f{i}" for i in range(net.num_features)]].to_numpy())
    cos = torch.nn.functional.cosine_similarity(feats, ours.float(), dim=1)
    assert cos.min() > 0.98


def test_model_card(pretrain_ckpt: Path, finetune_ckpt: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    report.write_text("# mpcs experiment report\n\n## demo, linear: ILA\n\n| method | Mean |\n"
                      "|---|---|\n| MPCS-OP | 74.38±5.38 |\n\n![t-SNE](figures/tsne.png)\n")
    out = export_encoder(pretrain_ckpt, tmp_path / "export", report=report)
    card = (out / "README.md").read_text()
    assert card.startswith("---\ntags:\n") and "library_name: timm\n" in card
    assert "Ordered Pair (OP)" in card and "**Epochs:** 1 of 1 configured" in card
    assert "BreakHis v1 layout" in card and ", 4 patients" in card
    assert "## Evaluation" in card and "| MPCS-OP | 74.38±5.38 |" in card
    assert "### demo, linear: ILA" in card and "figures/tsne.png" not in card
    assert "local-dir:" in card and "@inproceedings{chhipa2023magnification" in card
    assert "**Loss:** NT-Xent, temperature" in card
    ft = (export_encoder(finetune_ckpt, tmp_path / "ft") / "README.md").read_text()
    assert "fine-tuning of an encoder" in ft and "benign, malignant" in ft
    assert "No evaluation was given" in ft


def test_export_command(pretrain_ckpt: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(pretrain_ckpt), "--out", str(out)]) == 0
    assert f'timm.create_model("local-dir:{out}"' in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    assert main(["export", "--checkpoint", str(pretrain_ckpt), "--out", str(tmp_path / "x"),
                 "--report", str(tmp_path / "missing.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpcs export: error: --report") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.parametrize(("method", "loss", "pairs"), [
    ("vicreg", "**Loss:** VICReg: invariance 25.0, variance 25.0, covariance 1.0",
     "Ordered Pair (OP)"),
    ("simclr", "**Loss:** NT-Xent, temperature 0.5", "none: both views come from one image")])
def test_model_card_names_the_method_and_loss_of_the_run(method: str, loss: str,
                                                         pairs: str) -> None:
    config = {"encoder_name": "resnet18", "checkpoint_kind": "mpcs-pretrain",
              "architecture": "resnet18", "model_args": {}, "num_features": 512,
              "input_size": 64, "source_checkpoint": "/x/last.pt"}
    meta = {"epoch": 2, "config": {"method": method, "pairs": {"strategy": "ordered"},
                                   "loss": {"temperature": 0.5}, "train": {"epochs": 2}}}
    card = model_card(config, meta, params=11_000_000)
    assert loss in card and f"**Pair strategy:** {pairs}" in card
    assert (method == "simclr") == ("NT-Xent" in card)
