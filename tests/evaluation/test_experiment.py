"""The experiment grid and its report on tiny synthetic data: leakage guards, resume, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mpcs.config import resolve
from mpcs.core.errors import ConfigError, DataError
from mpcs.data.splits import Splits
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.evaluation import experiment as exp_mod
from mpcs.evaluation.cells import FINETUNE_CONFIG
from mpcs.evaluation.experiment import run_experiment
from mpcs.evaluation.report import write_report
from tests.conftest import TINY_OVERRIDES

FINETUNE_TINY = ["data.input_size=32", "train.epochs=2", "train.batch_size=4",
                 "linear.epochs=3", "model.encoder=resnet18", "train.threads=1"]


@pytest.fixture(scope="module")
def ten_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_breakhis(tmp_path_factory.mktemp("exp"),
                          SynthConfig(patients=10, samples_per_patient=2, image_size=(48, 32)),
                          progress=False)


def tiny_experiment(**extra) -> dict:
    return resolve(kind="experiment", preset="experiment-cpu-small", overrides=[
        "folds=2", "methods=[op]", "magnifications=[40X, 400X]", "label_fractions=[1.0]",
        "mode=linear", "baseline=none",
        f"pretrain_overrides={TINY_OVERRIDES + ['train.threads=1']}",
        f"finetune_overrides={FINETUNE_TINY}",
        *[f"{k}={v}" for k, v in extra.items()]])


def test_grid_runs_resumes_and_reports(ten_patients: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "exp"
    cfg = tiny_experiment(cross_magnification="true")
    table = run_experiment(cfg, ten_patients, out, progress=False)
    first_start = json.loads((out / "run.json").read_text())["started"]
    assert (table["status"] == "done").all(), table
    assert len(table) == 2 * 2 * 2  # folds x (MPCS-OP, random init) x magnifications

    # Pre-training of each fold used that fold's training patients only.
    splits = Splits.load(out / "splits.json")
    for k in range(2):
        used = set((out / f"fold{k}" / "pretrain-op" / "pretrain_patients.txt").read_text()
                   .split())
        assert used == set(splits.fold(k).train)
        assert not used & (set(splits.fold(k).val) | set(splits.fold(k).test))

    # Without --resume an existing experiment is refused; with it, finished cells are skipped.
    with pytest.raises(ConfigError, match="--resume"):
        run_experiment(cfg, ten_patients, out, progress=False)
    calls = []
    real_linear_eval = exp_mod.linear_eval
    monkeypatch.setattr(exp_mod, "linear_eval", lambda *a, **k: calls.append(a))
    again = run_experiment(cfg, ten_patients, out, resume=True, progress=False)
    assert not calls
    assert again["status"].str.startswith("skipped").all()
    info = json.loads((out / "run.json").read_text())
    assert info["started"] == first_start and len(info["resumed"]) == 1

    # Settings that shape the finished cells may not change on --resume (they would be mixed
    # with cells made under the new ones), wherever they come from; the cells chosen, and
    # where or how fast they run, may. A refused resume writes nothing.
    records = {name: (out / name).read_text()
               for name in ("config.yaml", "run.json", FINETUNE_CONFIG)}
    for extra, saved_in, key in (
            ({"cross_magnification": "false"}, "config.yaml", "cross_magnification"),
            ({"finetune_overrides": [*FINETUNE_TINY, "linear.lr=0.5"]},
             FINETUNE_CONFIG, "linear.lr"),
            ({"pretrain_overrides": [*TINY_OVERRIDES, "train.threads=1", "loss.temperature=0.2"]},
             "fold0/pretrain-op/config.yaml", "loss.temperature")):
        with pytest.raises(ConfigError, match=key) as err:
            run_experiment(tiny_experiment(**{"cross_magnification": "true", **extra}),
                           ten_patients, out, resume=True, progress=False)
        assert str(out / saved_in) in str(err.value)
        assert {name: (out / name).read_text() for name in records} == records
    # a preset file edited since (here: the saved resolved configuration) is caught too
    saved = out / FINETUNE_CONFIG
    saved.write_text(saved.read_text().replace("dropout: 0.3", "dropout: 0.5"))
    with pytest.raises(ConfigError, match="model.dropout: 0.5 != 0.3"):
        run_experiment(cfg, ten_patients, out, resume=True, progress=False)
    saved.write_text(saved.read_text().replace("dropout: 0.5", "dropout: 0.3"))
    fewer = tiny_experiment(cross_magnification="true", magnifications="[400X]",
                            finetune_overrides=[*FINETUNE_TINY, "train.eval_batch_size=7"])
    again = run_experiment(fewer, ten_patients, out, resume=True, progress=False)
    assert len(again) == 4 and not calls

    # A cell interrupted by a kill has no cell.json (written last): --resume redoes that one.
    interrupted = exp_mod.cell_dir(out, 1, "MPCS-OP", "400X", 1.0)
    (interrupted / "cell.json").unlink()
    monkeypatch.setattr(exp_mod, "linear_eval", real_linear_eval)
    again = run_experiment(cfg, ten_patients, out, resume=True, progress=False)
    redone = again[again["status"] == "done"]
    assert redone["cell"].tolist() == [str(interrupted)]
    assert (interrupted / "test_metrics.json").exists()

    csv_path, md_path = write_report(out)
    results = pd.read_csv(csv_path)
    for col in ("dataset", "method", "encoder", "fold", "magnification", "label_fraction",
                "ila", "pla"):
        assert col in results.columns
    assert set(results["method"]) == {"MPCS-OP", "Random init"}
    assert len(results) == 8
    report = md_path.read_text()
    assert "Image-level accuracy" in report and "Patient-level accuracy" in report
    assert "| MPCS-OP |" in report and "p vs Random init" in report
    # Each model trained at one magnification is also tested at all four.
    cross = pd.read_csv(out / "cross_magnification.csv")
    assert len(cross) == 8 * 4
    assert set(cross["test_magnification"]) == {"40X", "100X", "200X", "400X"}
    assert set(cross["train_magnification"]) == {"40X", "400X"}
    assert "Cross-magnification evaluation" in report and "| 400X |" in report
    # On its own magnification the cross evaluation reproduces the cell's test accuracy.
    cell = exp_mod.cell_dir(out, 0, "MPCS-OP", "400X", 1.0)
    own = pd.read_csv(cell / "cross_magnification.csv").set_index("test_magnification")
    assert own.loc["400X", "ila"] == pytest.approx(
        json.loads((cell / "test_metrics.json").read_text())["ila"], abs=1e-9)


def test_a_failed_cell_does_not_stop_the_others(ten_patients: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = exp_mod.linear_eval

    def flaky(cfg, train, val, test, out_dir, init, progress=True, overwrite=False):
        if "400X" in str(out_dir) and "fold0" in str(out_dir):
            raise RuntimeError("simulated crash")
        return real(cfg, train, val, test, out_dir, init=init, progress=progress,
                    overwrite=overwrite)

    monkeypatch.setattr(exp_mod, "linear_eval", flaky)
    out = tmp_path / "exp"
    table = run_experiment(tiny_experiment(), ten_patients, out, progress=False)
    failed = table[table["status"].str.startswith("failed")]
    assert len(failed) == 2 and (failed["magnification"] == "400X").all()
    assert (table["status"] == "done").sum() == 6
    lines = (out / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "simulated crash" in lines[0]


def test_keep_checkpoints_fold0_drops_later_folds_models_and_resume_still_works(
        ten_patients: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "exp"
    cfg = tiny_experiment(keep_checkpoints="fold0")
    table = run_experiment(cfg, ten_patients, out, progress=False)
    assert (table["status"] == "done").all(), table
    assert len(list((out / "fold0").rglob("best.pt"))) == 4
    assert (out / "fold0" / "pretrain-op" / "checkpoints" / "last.pt").exists()
    assert not list((out / "fold1").rglob("*.pt")), "fold 1 keeps no model file"
    assert len(list((out / "fold1").rglob("test_predictions.csv"))) == 4
    assert len(pd.read_csv(write_report(out, figures=False)[0])) == 8

    # Resume with nothing left to do pre-trains nothing, although fold 1's checkpoint is gone.
    monkeypatch.setattr(exp_mod, "pretrain", lambda *a, **k: pytest.fail("pre-trained"))
    again = run_experiment(cfg, ten_patients, out, resume=True, progress=False)
    assert again["status"].str.startswith("skipped").all()
    # A fold-1 cell to redo needs the encoder: its pre-training is run again.
    monkeypatch.undo()
    (exp_mod.cell_dir(out, 1, "MPCS-OP", "40X", 1.0) / "cell.json").unlink()
    again = run_experiment(cfg, ten_patients, out, resume=True, progress=False)
    assert (again["status"] == "done").sum() == 1
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        tiny_experiment(keep_checkpoints="some")


def test_drop_checkpoints_keeps_what_a_failed_or_unfinished_cell_needs(tmp_path: Path) -> None:
    fold = tmp_path / "fold1"
    finished, unfinished = fold / "M" / "40X" / "lf1", fold / "M" / "100X" / "lf1"
    ckpts = fold / "pretrain-ordered" / "checkpoints"
    for folder in (finished, unfinished, ckpts):
        folder.mkdir(parents=True)
    (finished / "cell.json").write_text("{}")
    for path in (finished / "best.pt", unfinished / "best.pt", ckpts / "last.pt"):
        path.write_bytes(b"x" * 10)
    (ckpts / "epoch_0001.pt").hardlink_to(ckpts / "last.pt")

    exp_mod.drop_checkpoints(fold, 1, [{"fold": 1, "status": "failed: boom"},
                                       {"fold": 2, "status": "done"}])
    assert not (finished / "best.pt").exists()
    assert (unfinished / "best.pt").exists() and (ckpts / "last.pt").exists()
    exp_mod.drop_checkpoints(fold, 1, [{"fold": 1, "status": "done"},
                                       {"fold": 0, "status": "failed: elsewhere"}])
    assert not list(ckpts.iterdir()) and (unfinished / "best.pt").exists()


def test_a_pretraining_that_cannot_start_names_its_fold_and_method(ten_patients: Path,
                                                                  tmp_path: Path) -> None:
    cfg = tiny_experiment()
    cfg["pretrain_overrides"] = [*cfg["pretrain_overrides"], "train.batch_size=512"]
    with pytest.raises(ConfigError, match=r"^fold 0, pre-training MPCS-OP on the fold's \d+ "
                       r"training patients: train.batch_size=512 is larger than"):
        run_experiment(cfg, ten_patients, tmp_path / "exp", progress=False)


def test_leaked_pretraining_patient_is_refused(ten_patients: Path, tmp_path: Path) -> None:
    run = tmp_path / "pre"
    run.mkdir()
    (run / "pretrain_patients.txt").write_text("A\nB\nLEAK\n")
    with pytest.raises(DataError, match="LEAK"):
        exp_mod._guard_pretraining(run, ["A", "B"], fold=0)


def test_experiment_refuses_splits_with_a_patient_in_two_parts(ten_patients: Path,
                                                               tmp_path: Path) -> None:
    from mpcs.data.datasets.breakhis import scan_breakhis
    from mpcs.data.splits import make_splits

    out = tmp_path / "exp"
    out.mkdir()
    splits = make_splits(scan_breakhis(ten_patients), folds=2, seed=0,
                         label_fractions=[1.0]).to_dict()
    moved = splits["fold_splits"][0]["test"][0]
    splits["fold_splits"][0]["train"].append(moved)   # now in train and test of fold 0
    (out / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(DataError, match=moved):
        run_experiment(tiny_experiment(), ten_patients, out, resume=True, progress=False)
    assert not (out / "fold0").exists(), "nothing may train on leaking splits"
