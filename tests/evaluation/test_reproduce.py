"""``mpcs reproduce``: the plan and GPU estimate, the settings that differ from the paper's
text, and the cpu-tiny chain from a local HTTP server (synthetic archives in the official
layouts) to the one report, then a second call that trains nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mpcs.cli import main
from mpcs.core.tables import read_csv
from mpcs.data.datasets import DOWNLOADS
from mpcs.data.download.fetch import sha256_file
from mpcs.data.synth.archive import SynthSizes, synthetic_archive
from mpcs.evaluation import experiment, reproduce, transfer
from mpcs.evaluation.reproduce import (
    TinySettings,
    estimate_gpu_hours,
    parse_tables,
    plan_stages,
    stage_config,
)
from mpcs.evaluation.reproduce_report import StageInfo, settings_differences
from tests.data.archive_server import ArchiveServer, closed_port

#: Smaller than the user-facing cpu-tiny: one pair strategy, two magnifications, 1 epoch.
TEST_TINY = TinySettings(
    sizes=SynthSizes(breakhis_patients=8, breakhis_samples=2, breakhis_image=(48, 32),
                     bach_per_class=3, bach_image=(96, 96), bcc_per_class=3,
                     bcc_image=(96, 96)),
    methods=("ordered",), magnifications=("40X", "400X"), pretrain_epochs=1, pretrain_batch=4,
    finetune_epochs=1, linear_epochs=5)


def test_plan_of_the_paper_tables(tmp_path: Path) -> None:
    stages = {s.key: s for s in plan_stages((5, 6, 7, 8, 9), "paper", tmp_path)}
    assert list(stages) == ["breakhis-resnet50", "breakhis-effnetb2", "pretrain-breakhis",
                            "bach", "bcc"]
    rn50 = stage_config(stages["breakhis-resnet50"])
    assert rn50["label_fractions"] == [0.3333, 1.0] and rn50["folds"] == 5
    assert rn50["pretrain_preset"] == "mpcs-op-resnet50" and rn50["baseline"] == "imagenet"
    assert rn50["keep_checkpoints"] == "fold0"  # disk: model files of folds 1-4 dropped
    assert rn50["pretrain_overrides"] == ["train.checkpoint_every=250"]
    bach = stage_config(stages["bach"])
    assert bach["label_fractions"] == [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert bach["transfer"]["pretrained"] == [
        str((tmp_path / "pretrain-breakhis" / m).absolute()) for m in reproduce.STRATEGIES]
    assert stage_config(stages["pretrain-breakhis"], "random")["pairs"]["strategy"] == "random"
    only5 = plan_stages((5,), "paper", tmp_path)
    assert [s.key for s in only5] == ["breakhis-resnet50", "breakhis-effnetb2"]
    assert stage_config(only5[0])["label_fractions"] == [0.3333]
    assert stage_config(plan_stages((7,), "paper", tmp_path)[1])["label_fractions"] == [1.0]
    assert parse_tables("9,5,5") == (5, 9)
    with pytest.raises(Exception, match="numbers from 5 to 9"):
        parse_tables("4,5")


def test_gpu_estimate_follows_the_bench_rate(tmp_path: Path) -> None:
    """1000 epochs of dilated ResNet-50 on all of BreakHis (7,909 images: ~3,955 views per
    epoch) at bench/README.md's 1,523 views/s on one H100: about 43 minutes each."""
    est = estimate_gpu_hours(plan_stages((7,), "paper", tmp_path))
    one = 1000 * 2 * 7909 / 4 / 1523 / 3600
    assert est.hours["pretrain-breakhis"] == pytest.approx(3 * one)
    assert 0.70 < one < 0.75
    full = estimate_gpu_hours(plan_stages((5, 6, 7, 8, 9), "paper", tmp_path))
    assert set(full.hours) == {"breakhis-resnet50", "breakhis-effnetb2", "pretrain-breakhis",
                               "bach", "bcc"}
    # 15 fold pre-trainings on 60 % of the data dominate a BreakHis grid
    assert full.hours["breakhis-resnet50"] > 15 * 0.6 * one
    assert any("efficientnet_b2 was not measured" in n for n in full.notes)


def test_dry_run_prints_plan_and_estimate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "repro"
    assert main(["reproduce", "--out", str(out), "--tables", "5,9", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "stage breakhis-resnet50: Tables 5, experiment breakhis-full-resnet50" in text
    assert "stage bcc: Tables 9, experiment bcc-resnet50" in text
    assert "estimated GPU time on one H100" in text and "total" in text
    assert not out.exists()


def test_settings_that_differ_from_the_paper_text(tmp_path: Path) -> None:
    stages = [StageInfo(s.key, s.kind, s.tables, s.dataset, s.slot, tmp_path / s.key,
                        stage_config(s)) for s in plan_stages((5, 7), "paper", tmp_path)]
    rows = {(r["where"], r["setting"]): r for r in settings_differences(stages)}
    tau = rows[("breakhis-resnet50", "pre-training: loss.temperature")]
    assert (tau["ours"], tau["paper"], tau["authors_code"]) == (0.01, 0.01, 0.1)
    lr = rows[("pretrain-breakhis", "pre-training: optim.lr")]  # LARS 0.2 vs the text's 1e-5
    assert (lr["ours"], lr["paper"]) == (0.2, 1.0e-5)
    assert ("breakhis-effnetb2", "pre-training: optim.lr") not in rows  # Adam 1e-5, the text
    assert ("breakhis-effnetb2", "pre-training: loss.temperature") in rows
    assert ("breakhis-resnet50", "pre-training: train.epochs") not in rows  # 1000 as the text
    assert ("bach", "grid: transfer.patch_size") not in rows  # 512 as the text
    assert not any(w == "bach" and s.startswith("fine-tuning") for w, s in rows)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The registry pointed at a local server of synthetic archives (their own counts)."""
    archives = {n: synthetic_archive(n, tmp_path / "archives", TEST_TINY.sizes)
                for n in DOWNLOADS}
    files = {f"/{path.name}": path.read_bytes() for path, _ in archives.values()}
    with ArchiveServer(files) as server:
        for name, (path, expected) in archives.items():
            monkeypatch.setitem(DOWNLOADS, name, replace(
                DOWNLOADS[name], url=server.url(f"/{path.name}"), expected=expected))
        monkeypatch.setattr(reproduce, "TINY", TEST_TINY)
        yield server, archives


def _finished(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))
            if p.name in ("cell.json", "done.json")}


def _trained_again(*args, **kwargs):
    raise AssertionError("a finished cell or pre-training ran again")


@pytest.mark.slow
def test_cpu_tiny_from_the_local_server_then_resume(served, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    server, archives = served
    real_linear_eval = transfer.linear_eval
    out = tmp_path / "repro"
    args = ["reproduce", "--out", str(out), "--scale", "cpu-tiny", "--source", "official",
            "--tables", "5,7,9", "--no-figures", "--quiet", "--retries", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.index("estimated GPU time") < text.index("downloading")
    assert sorted(p for p, _ in server.requests) == sorted(f"/{a.name}" for a, _ in
                                                           archives.values())
    report = (out / "report.md").read_text()
    for title in ("## Table 5", "## Table 7", "## Table 9"):
        assert title in report
    for archive, _ in archives.values():
        assert sha256_file(archive) in report
    assert "| breakhis-resnet50 | grid: folds | 2 | 5 | - |" in report
    assert "| ImageNet (ours: Random init) | ours |" in report
    cells = read_csv(out / "reproduction.csv")
    op = cells[cells["row"] == "MPCS-OP"]
    for table in (5, 7, 9):
        done = op[(op["table"] == table) & op["ours_mean"].notna()]
        assert len(done) and (done["folds"] == 2).all()
        assert done["paper_mean"].notna().all()
    mean = op[(op["table"] == 5) & (op["column"] == "Mean")]
    assert mean["p_value"].notna().any()
    assert (op[(op["table"] == 5) & (op["column"] == "100X")]["folds"] == 0).all()  # not run
    finished = _finished(out)
    assert len(finished) == 2 * 2 * 2 + 2 + 1 + 2 * 2 + 2 * 2 * 2  # cells and pre-trainings

    # a second call: data found verified, every cell and pre-training kept
    for module, name in ((experiment, "finetune"), (experiment, "linear_eval"),
                         (experiment, "pretrain"), (transfer, "finetune"),
                         (transfer, "linear_eval"), (reproduce, "pretrain")):
        monkeypatch.setattr(module, name, _trained_again)
    requests = len(server.requests)
    assert main(args) == 0
    assert len(server.requests) == requests and _finished(out) == finished
    assert read_csv(out / "reproduction.csv").equals(cells)
    for stage in ("breakhis-resnet50", "bach", "bcc"):
        statuses = set(read_csv(out / stage / "cells.csv")["status"])
        assert statuses == {"skipped (done)"}
    state = json.loads((out / "reproduce.json").read_text())
    assert len(state["calls"]) == 2 and state["tables"] == [5, 7, 9]

    # an interrupted cell (no cell.json) is the only one run again
    undone = next(Path(p) for p in finished
                  if "bcc" in Path(p).relative_to(out).parts and "linear" in p)
    undone.unlink()
    runs: list[str] = []

    def counted(*a, **k):
        runs.append(str(a[4]))
        return real_linear_eval(*a, **k)

    monkeypatch.setattr(transfer, "linear_eval", counted)
    assert main(args) == 0
    assert runs == [str(undone.parent)] and undone.is_file()


def test_another_scale_in_the_same_folder_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "repro"
    out.mkdir()
    state = {"scale": "cpu-tiny", "source": "synthetic",
             "data_root": str((out / "data").absolute()), "tables": [5], "calls": []}
    (out / "reproduce.json").write_text(json.dumps(state))
    assert main(["reproduce", "--out", str(out), "--scale", "paper", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a reproduction with scale 'cpu-tiny', not 'paper'" in err
    assert json.loads((out / "reproduce.json").read_text()) == state  # unchanged
    assert sorted(p.name for p in out.iterdir()) == [".lock", "reproduce.json"]


def test_unreachable_source_is_one_line_and_exit_2(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/BreaKHis_v1.tar.gz"
    monkeypatch.setitem(DOWNLOADS, "breakhis", replace(DOWNLOADS["breakhis"], url=url))
    out = tmp_path / "repro"
    assert main(["reproduce", "--out", str(out), "--tables", "5", "--quiet",
                 "--retries", "0"]) == 2
    captured = capsys.readouterr()
    assert "estimated GPU time" in captured.out
    assert captured.err.startswith(f"mpcs reproduce: error: cannot download {url}")
    assert captured.err.count("\n") == 1 and "--from ARCHIVE" in captured.err
