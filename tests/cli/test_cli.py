"""The command line as a user meets it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mpcs.cli import main
from mpcs.core.errors import MpcsError
from mpcs.data.synth.breakhis import SynthConfig
from mpcs.evaluation.demo import run_demo
from tests.conftest import TINY_OVERRIDES


def test_inspect_real_subset(shared_breakhis: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--data", str(shared_breakhis)]) == 0
    out = capsys.readouterr().out
    assert "87 images, 16 patients" in out
    assert "Complete 4-magnification samples: 0" in out


def test_pretrain_on_real_subset_explains_why_not(shared_breakhis: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--data", str(shared_breakhis), "--out", str(tmp_path / "r"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no sample is present at all four magnifications" in err
    assert "Traceback" not in err


def test_missing_data_folder_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = subprocess.run([sys.executable, "-m", "mpcs", "inspect", "--data", str(missing)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["--set", "loss.temprature=0.1"], "did you mean 'temperature'"),
    (["--set", "loss.temperature=0"], "loss.temperature must be > 0"),
    (["--preset", "no-such-preset"], "available: "),
])
def test_bad_configuration_fails_before_work(tiny_breakhis: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, args: list[str],
                                             needle: str) -> None:
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet", *args])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not run.exists()


def test_pretrain_command_and_resume(tiny_breakhis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    assert main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet",
                 *sets]) == 0
    assert (run / "checkpoints" / "last.pt").is_file()
    # Resuming a finished run does no more steps and succeeds.
    assert main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet",
                 "--resume", *sets]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_synth_command_writes_official_layout(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path), "--patients", "2", "--samples-per-patient",
                 "1", "--image-size", "32x24", "--quiet"]) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert len(files) == 8
    assert files[0].startswith("BreaKHis_v1/histology_slides/breast/benign/SOB/")
    assert main(["synth", "--out", str(tmp_path), "--image-size", "big"]) == 2


def test_presets_command_lists_paper_presets(capsys: pytest.CaptureFixture) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("mpcs-fp-resnet50", "mpcs-op-effnetb2", "mpcs-rp-resnet50", "cpu-small"):
        assert name in out


def test_demo_end_to_end_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The demo's grid on a tiny data set: folds, FP/OP/RP vs random init, tables, report."""
    synth = SynthConfig(patients=10, samples_per_patient=2, image_size=(48, 32), seed=0)
    overrides = ["folds=2", "methods=[ordered, random]",
                 "pretrain_overrides=" + json.dumps([*TINY_OVERRIDES, "model.encoder=resnet18"]),
                 "finetune_overrides=" + json.dumps(["model.encoder=resnet18", "linear.epochs=3"])]
    results = run_demo(tmp_path, synth=synth, overrides=overrides, figures=False,
                       progress=False)
    out = capsys.readouterr().out
    assert set(results["magnification"]) == {"40X", "100X", "200X", "400X"}
    assert set(results["method"]) == {"Random init", "MPCS-OP", "MPCS-RP"}
    assert set(results["fold"]) == {0, 1}
    assert results[["ila", "pla"]].stack().between(0, 1).all()
    assert (results["label_fraction"] == 0.2).all()
    report = (tmp_path / "experiment" / "report.md").read_text()
    assert "Image-level accuracy" in report and "p vs Random init" in report
    assert (tmp_path / "experiment" / "report.html").is_file()
    summary = (tmp_path / "results.md").read_text()
    assert "| Random init |" in summary and "| MPCS-OP |" in summary
    assert "MPCS-OP vs Random init: ILA" in out and "wall time" in out
    # Each fold pre-trained on its own training patients only (the runner's guard passed);
    # a second run without --resume refuses to mix with the finished one ...
    with pytest.raises(MpcsError, match="--resume"):
        run_demo(tmp_path, synth=synth, overrides=overrides, figures=False, progress=False)
    # ... and with --resume it reuses every finished cell and reports the same numbers.
    again = run_demo(tmp_path, synth=synth, overrides=overrides, resume=True, figures=False,
                     progress=False)
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  results.reset_index(drop=True))


def test_splits_then_linear_eval_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mpcs.data.synth.breakhis import write_breakhis

    data = write_breakhis(tmp_path / "d", SynthConfig(patients=10, samples_per_patient=2,
                                                      image_size=(48, 32)), progress=False)
    splits = tmp_path / "splits.json"
    assert main(["splits", "--data", str(data), "--out", str(splits), "--folds", "2"]) == 0
    assert "fold 1: train" in capsys.readouterr().out
    run = tmp_path / "lin"
    sets = [a for o in ("data.input_size=32", "linear.epochs=2", "train.threads=1")
            for a in ("--set", o)]
    assert main(["linear-eval", "--data", str(data), "--splits", str(splits), "--fold", "1",
                 "--magnification", "100X", "--init", "none", "--label-fraction", "0.5",
                 "--out", str(run), "--preset", "finetune-cpu-small", "--quiet", *sets]) == 0
    out = capsys.readouterr().out
    assert "test ILA" in out
    preds = pd.read_csv(run / "test_predictions.csv")
    assert set(preds["magnification"]) == {"100X"}
    assert main(["linear-eval", "--data", str(data), "--splits", str(splits), "--fold", "7",
                 "--init", "none", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["report", str(tmp_path / "x")]) == 2


def test_pretrain_on_one_folds_training_patients(tmp_path: Path) -> None:
    from mpcs.data.splits import Splits
    from mpcs.data.synth.breakhis import write_breakhis

    data = write_breakhis(tmp_path / "d", SynthConfig(patients=10, samples_per_patient=2,
                                                      image_size=(48, 32)), progress=False)
    splits = tmp_path / "splits.json"
    assert main(["splits", "--data", str(data), "--out", str(splits), "--folds", "2"]) == 0
    run = tmp_path / "run"
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--quiet", "--splits",
                 str(splits), "--fold", "1", *sets]) == 0
    used = (run / "pretrain_patients.txt").read_text().split()
    assert used == sorted(Splits.load(splits).fold(1).train)
    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "r2"), "--quiet",
                 "--splits", str(splits), *sets]) == 2


def test_embed_export_and_predict_commands(tiny_breakhis: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    assert main(["pretrain", "--data", str(tiny_breakhis), "--out", str(run), "--quiet",
                 *sets]) == 0
    ckpt = str(run / "checkpoints" / "last.pt")
    feats = tmp_path / "features.csv"
    assert main(["embed", "--checkpoint", ckpt, "--images", str(tiny_breakhis), "--out",
                 str(feats), "--quiet"]) == 0
    table = pd.read_csv(feats)
    assert len(table) == 48 and {"path", "patient_id", "magnification", "f0"} <= set(table)
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()
    capsys.readouterr()
    # predict needs a fine-tuned checkpoint: a pre-training one is refused in one line.
    assert main(["predict", "--checkpoint", ckpt, "--images", str(tiny_breakhis), "--out",
                 str(tmp_path / "p.csv"), "--quiet"]) == 2
    assert "fine-tuned checkpoint" in capsys.readouterr().err
