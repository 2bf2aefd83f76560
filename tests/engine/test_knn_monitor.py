"""Online kNN monitor: the weighted vote, the held-out-patient monitor on BreakHis-layout
data, and the plot of metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcs.core.errors import ConfigError, DataError
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.engine.knn_monitor import KnnMonitor, breakhis_monitor, knn_predict
from mpcs.models.encoders import create_encoder
from mpcs.viz.curves import plot_metrics, read_metrics


def test_knn_weighted_vote_by_cosine_similarity() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[2.0, 0.1], [0.1, 3.0]])  # scale does not matter (cosine)
    assert knn_predict(bank, labels, queries, k=2).tolist() == [0, 1]
    # k=5: three class-1 votes against two class-0 ones, but the temperature weights the
    # two near class-0 neighbours of query 0 far more.
    assert knn_predict(bank, labels, queries[:1], k=5, temperature=0.05).tolist() == [0]
    # with a huge temperature every neighbour weighs the same: majority wins
    assert knn_predict(bank, labels, queries[:1], k=5, temperature=1e6).tolist() == [1]
    with pytest.raises(ValueError, match="non-empty"):
        knn_predict(bank[:0], labels[:0], queries)


def test_monitor_scores_a_separating_encoder_perfectly() -> None:
    class ColourEncoder(torch.nn.Module):
        """Mean red and blue: separates red (label 0) from blue (label 1) images."""
        mean, std, num_features = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 2

        def forward(self, x):
            return x.mean(dim=(2, 3))[:, [0, 2]]

    def images(n, channel):
        x = np.zeros((n, 3, 8, 8), np.uint8)
        x[:, channel] = 200
        return x

    ref = np.concatenate([images(4, 0), images(4, 2)])
    qry = np.concatenate([images(3, 0), images(3, 2)])
    mon = KnnMonitor(ref, [0] * 4 + [1] * 4, qry, [0, 0, 0, 1, 1, 1],
                     ["a", "a", "b", "c", "c", "d"], input_size=8, k=3)
    assert mon.evaluate(ColourEncoder()) == {"knn_acc": 1.0, "knn_pla": 1.0}
    mon_flipped = KnnMonitor(ref, [1] * 4 + [0] * 4, qry, [0, 0, 0, 1, 1, 1],
                             ["a", "a", "b", "c", "c", "d"], input_size=8, k=3)
    assert mon_flipped.evaluate(ColourEncoder())["knn_acc"] == 0.0


def test_breakhis_monitor_uses_held_out_patients_only(tiny_breakhis: Path) -> None:
    patients = sorted(scan_breakhis(tiny_breakhis)["patient_id"].unique())
    train, val = patients[:3], patients[3:]
    mon = breakhis_monitor(tiny_breakhis, train, val, 32, cache_dir=None, k=5)
    assert len(mon.reference) == 3 * 3 * 4 and len(mon.query) == 1 * 3 * 4
    assert set(mon.query_patients) == set(val)
    enc = create_encoder("resnet18", weights="none")
    enc.train()
    out = mon.evaluate(enc)
    assert 0.0 <= out["knn_acc"] <= 1.0
    assert out["knn_pla"] == pytest.approx(out["knn_acc"])  # one held-out patient
    assert enc.training  # mode restored
    with pytest.raises(ConfigError, match="overlap"):
        breakhis_monitor(tiny_breakhis, train, train[:1], 32, cache_dir=None)
    with pytest.raises(ConfigError, match="not in"):
        breakhis_monitor(tiny_breakhis, train, ["nobody"], 32, cache_dir=None)
    at_40x = breakhis_monitor(tiny_breakhis, train, val, 32, cache_dir=None,
                              magnification="40X")
    assert len(at_40x.query) == 3


def test_plot_metrics_with_and_without_knn(tmp_path: Path) -> None:
    lines = [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.5, "knn_acc": 0.7, "knn_pla": 0.6},
             {"epoch": 3, "loss": 2.2}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"epoch": 4, "lo')
    table = read_metrics(path)
    assert list(table["epoch"]) == [1, 2, 3]  # the line cut short is skipped
    png = plot_metrics(path, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no epoch"):
        read_metrics(tmp_path / "empty.jsonl")


@pytest.mark.slow
def test_pretrain_logs_knn_accuracy_every_k_epochs(tiny_breakhis: Path, tmp_path: Path) -> None:
    from mpcs.cli import main
    from mpcs.config import resolve
    from mpcs.engine.pretrain import pretrain
    from tests.conftest import TINY_OVERRIDES

    patients = sorted(scan_breakhis(tiny_breakhis)["patient_id"].unique())
    cfg = resolve(preset="cpu-small", overrides=[
        *TINY_OVERRIDES, "train.epochs=3", f"data.patients={patients[:3]}",
        f"monitor.val_patients={patients[3:]}", "monitor.knn_every=2", "monitor.knn_k=5",
        "train.threads=1"])
    pretrain(cfg, tiny_breakhis, tmp_path / "run", progress=False)
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # every 2nd epoch and the last one
    assert lines["knn_acc"].notna().tolist() == [False, True, True]
    assert main(["plot-metrics", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "metrics.png").is_file()


def test_monitor_needs_held_out_patients_and_labels() -> None:
    from mpcs.config import resolve
    from mpcs.engine.knn_monitor import build_monitor

    cfg = resolve(preset="cpu-small", overrides=["monitor.knn_every=1"])
    with pytest.raises(ConfigError, match="val_patients"):
        build_monitor(cfg, "unused")
    cfg = resolve(preset="cpu-small", overrides=["monitor.knn_every=1", "data.source=zoom",
                                                 "monitor.val_patients=[p1]"])
    with pytest.raises(ConfigError, match="no labels"):
        build_monitor(cfg, "unused")
    # Without data.patients pre-training would use every patient, the held-out ones too.
    cfg = resolve(preset="cpu-small", overrides=["monitor.knn_every=1",
                                                 "monitor.val_patients=[p1]"])
    with pytest.raises(ConfigError, match="data.patients"):
        build_monitor(cfg, "unused")
    assert build_monitor(resolve(preset="cpu-small"), "unused") is None
