"""report.html: Markdown subset -> HTML, images inlined, figures optional and never fatal."""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mpcs.evaluation import figures as figures_mod
from mpcs.evaluation.html import markdown_to_html, write_html
from mpcs.evaluation.report import write_report

torch.set_num_threads(1)

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _no_network(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()


# --------------------------------------------------------------------------- converter


def test_markdown_subset_to_html(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG)
    md = "\n".join([
        "# Report <v1>", "", "Intro with `Mean` and **bold** text,",
        "continued on a second line.", "",
        "## Table", "", "| method | 40X | Mean |", "|---|:---:|---:|",
        "| MPCS-OP | 81.2±1.0 | 80.0 |", "| <script>x</script> | - | 1 |", "",
        "- first item", "- second item", "",
        "![a caption](figures/a.png)", "",
        "![gone](figures/missing.png)", "",
        "![remote](https://example.org/x.png)", "",
    ])
    out = markdown_to_html(md, tmp_path)
    assert '<h1 id="report-v1">Report &lt;v1&gt;</h1>' in out
    assert "<p>Intro with <code>Mean</code> and <strong>bold</strong> text, continued on a " \
           "second line.</p>" in out
    table = re.search(r"<table>.*?</table>", out, re.S).group(0)
    assert table.count("<tr>") == 3 and table.count("</th>") == 3
    assert '<th style="text-align:center">40X</th>' in table
    assert "<td>81.2±1.0</td>" in table.replace(' style="text-align:center"', "")
    assert "&lt;script&gt;" in table and "<script>" not in out
    assert "<ul><li>first item</li><li>second item</li></ul>" in out
    uri = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="a caption">', out)
    assert uri and base64.b64decode(uri.group(1)) == PNG
    assert "[missing image: figures/missing.png]" in out
    assert "remote image not embedded" in out
    _no_network(out)


def test_write_html_is_a_complete_page(tmp_path: Path) -> None:
    (tmp_path / "p.png").write_bytes(PNG)
    path = write_html("# T\n\n![x](p.png)\n", tmp_path / "r.html", title="T & co")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page and "<title>T &amp; co</title>" in page
    assert "<style>" in page and "data:image/png;base64," in page
    _no_network(page)


# --------------------------------------------------------------------------- write_report


def _fake_experiment(root: Path) -> Path:
    """Finished cells (cell.json + test_predictions.csv) and pre-training logs, no models."""
    rng = np.random.default_rng(0)
    for fold in range(2):
        for method in ("Random init", "MPCS-OP"):
            cell = root / f"fold{fold}" / method / "40X" / "lf1"
            cell.mkdir(parents=True)
            (cell / "cell.json").write_text(json.dumps({
                "dataset": "breakhis", "mode": "linear", "encoder": "resnet18", "init": "none",
                "fold": fold, "method": method, "magnification": "40X",
                "label_fraction": 1.0}))
            n = 8
            pd.DataFrame({"path": [f"/nowhere/img{i}.png" for i in range(n)],
                          "patient_id": [f"p{i % 4}" for i in range(n)],
                          "magnification": "40X",
                          "label": ["benign", "malignant"] * (n // 2),
                          "probability": rng.random(n),
                          "prediction": "benign"}).to_csv(cell / "test_predictions.csv",
                                                          index=False)
        run = root / f"fold{fold}" / "pretrain-ordered"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "loss": 5.0 - e, "lr": 1e-3}) + "\n" for e in (1, 2, 3)))
    return root


def _tables(text: str) -> int:
    return len(re.findall(r"^\|---", text, re.M))


def test_report_without_figures(tmp_path: Path) -> None:
    exp = _fake_experiment(tmp_path / "exp")
    _, md_path = write_report(exp, figures=False)
    md = md_path.read_text()
    page = (exp / "report.html").read_text()
    assert "## Figures" not in md and not (exp / "figures").exists()
    assert _tables(md) >= 2 and page.count("<table>") == _tables(md)
    assert "MPCS-OP" in page and "Image-level accuracy" in page


@pytest.mark.slow
def test_figures_are_embedded_and_failures_never_lose_tables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    exp = _fake_experiment(tmp_path / "exp")
    with caplog.at_level(logging.WARNING):
        _, md_path = write_report(exp)
    md = md_path.read_text()
    # curves from the logs; t-SNE and Grad-CAM have no checkpoints / images here
    assert "![" in md and "(figures/pretrain_loss.png)" in md
    png = (exp / "figures" / "pretrain_loss.png").read_bytes()
    page = (exp / "report.html").read_text()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(uris[0]) == png
    assert page.count("<table>") == _tables(md) >= 2
    _no_network(page)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(figures_mod, "_curves", boom)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, md_path = write_report(exp)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("training curves" in w and "disk on fire" in w for w in warned), warned
    md2 = md_path.read_text()
    assert "pretrain_loss.png" not in md2 and _tables(md2) == _tables(md)
    assert (exp / "report.html").read_text().count("<table>") == _tables(md)


def test_cli_report_no_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mpcs.cli import main

    exp = _fake_experiment(tmp_path / "exp")
    assert main(["report", str(exp), "--no-figures"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (exp / "report.html").is_file() and not (exp / "figures").exists()


@pytest.mark.slow
def test_report_of_a_tiny_experiment_has_all_pictures(tmp_path: Path) -> None:
    from mpcs.config import resolve
    from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
    from mpcs.evaluation.experiment import run_experiment
    from tests.conftest import TINY_OVERRIDES

    data = write_breakhis(tmp_path / "data", SynthConfig(patients=8, samples_per_patient=2,
                                                         image_size=(64, 48)), progress=False)
    cfg = resolve(kind="experiment", preset="experiment-cpu-small", overrides=[
        "folds=2", "methods=[op]", "magnifications=[40X]", "label_fractions=[1.0]",
        "mode=linear", "baseline=none",
        f"pretrain_overrides={TINY_OVERRIDES + ['train.threads=1']}",
        "finetune_overrides=['data.input_size=64', 'linear.epochs=3', "
        "'model.encoder=resnet18', 'train.threads=1']"])
    exp = tmp_path / "exp"
    run_experiment(cfg, data, exp, progress=False)
    _, md_path = write_report(exp)
    md = md_path.read_text()
    for name in ("pretrain_loss.png", "finetune_curves.png", "tsne_fold0.png",
                 "gradcam_fold0.png"):
        assert f"(figures/{name})" in md, md
        assert (exp / "figures" / name).is_file()
    assert "Random init vs MPCS-OP" in md
    assert not list((exp / "figures").glob(".*"))  # no temporary files left
    page = (exp / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    _no_network(page)
