"""Training curves from metrics.jsonl: real run logs, experiments, bad lines, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mpcs.core.errors import DataError
from mpcs.viz.curves import (
    _mean_curve,
    experiment_figures,
    plot_curves,
    plot_run,
    read_metrics,
    run_kind,
)
from tests.api.test_inference import make_finetune_ckpt

torch.set_num_threads(1)


def _png_ok(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape[0] > 150 and pixels.shape[1] > 300
    assert pixels.std() > 5  # something is drawn
    return pixels


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _pretrain_log(run: Path, losses: list[float]) -> None:
    _write_jsonl(run / "metrics.jsonl", [
        {"epoch": i + 1, "step": 10 * (i + 1), "loss": v, "lr": 1e-3 * (0.9 ** i),
         "images_per_s": 100.0, "seconds": 1.0, "skipped_steps": 0}
        for i, v in enumerate(losses)])


def _finetune_log(cell: Path, method: str, n: int, selected: int) -> None:
    _write_jsonl(cell / "metrics.jsonl", [
        {"epoch": i + 1, "train_loss": 0.7 - 0.05 * i, "val_loss": 0.7 - 0.03 * i,
         "val_ila": 0.5 + 0.05 * i, "val_pla": 0.5, "lr": 1e-3, "seconds": 0.1,
         "improved": i + 1 == selected} for i in range(n)])
    (cell / "cell.json").write_text(json.dumps({"method": method}))
    (cell / "test_metrics.json").write_text(json.dumps({"selected_epoch": selected}))


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """An experiment folder with logs only: 2 folds x (OP, FP) pre-training and 2 methods x
    1 magnification fine-tuning cells of different lengths (early stopping)."""
    exp = tmp_path / "exp"
    for k in range(2):
        _pretrain_log(exp / f"fold{k}" / "pretrain-ordered", [5.0, 4.0, 3.0 - k])
        _pretrain_log(exp / f"fold{k}" / "pretrain-fixed", [5.0, 4.5])
        _finetune_log(exp / f"fold{k}" / "MPCS-OP" / "40X" / "lf1", "MPCS-OP", 4 + k, 2)
        _finetune_log(exp / f"fold{k}" / "Random init" / "40X" / "lf1", "Random init", 3, 1)
    return exp


@pytest.mark.slow
def test_real_finetune_log_is_plotted(tiny_breakhis: Path, tmp_path: Path) -> None:
    best = make_finetune_ckpt(tiny_breakhis, tmp_path / "ft")
    m = read_metrics(best.parent)
    assert run_kind(m) == "finetune"
    assert {"train_loss", "val_loss", "val_ila", "val_pla", "lr"} <= set(m.columns)
    _png_ok(plot_run(best.parent, tmp_path / "ft.png"))


def test_pretrain_log_gives_loss_and_lr(tmp_path: Path) -> None:
    run = tmp_path / "pre"
    _pretrain_log(run, [4.0, 3.5, 3.2])
    m = read_metrics(run)
    assert run_kind(m) == "pretrain" and m["epoch"].tolist() == [1, 2, 3]
    _png_ok(plot_run(run, tmp_path / "pre.png"))


def test_knn_monitor_columns_add_a_panel(tmp_path: Path) -> None:
    plain, monitored = tmp_path / "plain", tmp_path / "knn"
    _pretrain_log(plain, [4.0, 3.5, 3.2])
    _write_jsonl(monitored / "metrics.jsonl", [
        {"epoch": 1, "loss": 4.0, "lr": 1e-3},
        {"epoch": 2, "loss": 3.5, "lr": 1e-3, "knn_acc": 0.6, "knn_pla": 0.5},
        {"epoch": 3, "loss": 3.2, "lr": 1e-3}])
    two = _png_ok(plot_run(plain, tmp_path / "a.png"))
    three = _png_ok(plot_run(monitored, tmp_path / "b.png"))
    assert three.shape[1] > 1.3 * two.shape[1]


def test_unreadable_lines_are_skipped_and_empty_logs_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _pretrain_log(run, [4.0, 3.0])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "loss": 2.')  # a write cut by a crash
    assert read_metrics(run)["loss"].tolist() == [4.0, 3.0]
    (run / "metrics.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no epoch"):
        read_metrics(run)
    with pytest.raises(DataError, match="metrics.jsonl"):
        read_metrics(tmp_path / "nothing")
    with pytest.raises(DataError, match="neither"):
        run_kind(pd.DataFrame({"epoch": [1], "accuracy": [0.5]}))


def test_mean_curve_over_runs_of_different_lengths() -> None:
    a = pd.Series([1.0, 2.0, 3.0], index=[1, 2, 3])
    b = pd.Series([3.0, 4.0], index=[1, 2])
    assert _mean_curve([a, b]).tolist() == [2.0, 3.0, 3.0]


@pytest.mark.slow
def test_experiment_gives_one_png_per_run_and_combined_figures(experiment: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "curves"
    paths = plot_curves(experiment, out)
    names = sorted(p.name for p in paths)
    assert "pretrain_loss.png" in names and "finetune_curves.png" in names
    assert "fold0_pretrain-ordered.png" in names and "fold1_MPCS-OP_40X_lf1.png" in names
    assert len(paths) == 4 + 4 + 2  # 4 pre-training runs, 4 cells, 2 combined
    for p in paths:
        _png_ok(p)
    assert [p.name for p in experiment_figures(experiment, tmp_path / "c")] == [
        "pretrain_loss.png", "finetune_curves.png"]


def test_single_run_folder_and_cli(experiment: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from mpcs.cli import main

    run = experiment / "fold0" / "MPCS-OP" / "40X" / "lf1"
    assert main(["curves", str(run), "--out", str(tmp_path / "cli")]) == 0
    assert "1 curve picture(s)" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cli").glob("*.png")] == ["lf1.png"]
    assert main(["curves", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
