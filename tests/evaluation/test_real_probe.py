"""The real-data benchmark: repeated patient-level folds, frozen probes, paired tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mpcs.evaluation.real_probe as rp
from mpcs.cli import main
from mpcs.core.errors import ConfigError, DataError
from mpcs.evaluation.real_probe import (
    ProbeSettings,
    Variant,
    parse_variant,
    probe_folds,
    run_real_probe,
    summary_markdown,
)
from mpcs.evaluation.stats import corrected_paired_test, paired_test
from tests.conftest import SHARED_DATA


def test_folds_split_patients_stratified_and_reshuffle_per_repeat() -> None:
    patients = np.repeat([f"p{i}" for i in range(10)], [1, 5, 2, 8, 3, 1, 4, 6, 2, 9])
    labels = np.where(np.isin(patients, ["p0", "p1", "p2", "p3", "p4"]), "benign", "malignant")
    folds = probe_folds(labels, patients, folds=5, repeats=3, seed=0)
    assert len(folds) == 15
    tests_by_repeat: dict[int, list[frozenset]] = {}
    for r, _, train, test in folds:
        assert not set(patients[train]) & set(patients[test])
        assert len(train) + len(test) == len(patients)
        # one benign and one malignant test patient per fold (5 of each, 5 folds)
        assert sorted(labels[test][np.unique(patients[test], return_index=True)[1]]) == \
            ["benign", "malignant"]
        tests_by_repeat.setdefault(r, []).append(frozenset(patients[test]))
    for parts in tests_by_repeat.values():
        assert set().union(*parts) == set(patients)  # every patient tested once per repeat
    assert set(tests_by_repeat[0]) != set(tests_by_repeat[1])  # repeats differ


def test_folds_refuse_what_cannot_be_split() -> None:
    with pytest.raises(DataError, match="too few for 5"):
        probe_folds(["a", "a", "b", "b"], ["p1", "p2", "p3", "p4"], 5, 1, 0)
    with pytest.raises(DataError, match="single class"):
        probe_folds(["a"] * 6, [f"p{i}" for i in range(6)], 2, 1, 0)
    with pytest.raises(DataError, match="two classes: p1"):
        probe_folds(["a", "b", "a", "b"], ["p1", "p1", "p2", "p3"], 2, 1, 0)


def test_corrected_test_is_more_cautious_than_the_plain_one() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 0.8, 15)
    a = b + 0.03 + rng.normal(0, 0.04, 15)
    plain, corrected = paired_test(a, b), corrected_paired_test(a, b, 0.2)
    assert corrected["mean_diff"] == pytest.approx(plain["mean_diff"])
    assert plain["t_pvalue"] < corrected["pvalue"] < 1
    # the variance grows by (1/J + 1/4) / (1/J): t shrinks by its square root
    assert corrected["t_statistic"] == pytest.approx(
        plain["t_statistic"] / np.sqrt(1 + 15 * 0.25), rel=1e-9)
    assert corrected_paired_test(b, b, 0.2)["pvalue"] == 1.0


def test_parse_variant() -> None:
    assert parse_variant("x=imagenet") == Variant("x", "imagenet")
    assert parse_variant("y=cpu-small,train.epochs=2,augment.hed=0.05") == Variant(
        "y", "mpcs", "cpu-small", ("train.epochs=2", "augment.hed=0.05"))
    mixed = parse_variant("m=cpu-small,data.source=[breakhis, zoom],pairs.complete_only=false")
    assert mixed.overrides == ("data.source=[breakhis, zoom]", "pairs.complete_only=false")
    for bad in ("noequals", "x=none,train.epochs=2", "=imagenet"):
        with pytest.raises(ConfigError):
            parse_variant(bad)


SETTINGS = ProbeSettings(magnification="200X", folds=2, repeats=2, encoder="resnet10t",
                         input_size=32)
VARIANTS = [Variant("random init", "none"), Variant("imagenet", "none"),
            Variant("mpcs", "mpcs", "cpu-small", ("train.epochs=1", "train.batch_size=4",
                                                  "schedule.warmup_epochs=0",
                                                  "model.head_hidden=[16]",
                                                  "model.head_out=8"))]


def test_summary_shows_any_variant_name_as_text() -> None:
    variants = [Variant("imagenet", "imagenet"), Variant("op|*new*", "mpcs", "cpu-small")]
    results = pd.DataFrame([{"repeat": 0, "fold": k, "variant": v.name, "ila": 0.5 + d,
                             "pla": 0.6 + d}
                            for k, d in enumerate((0.0, 0.1, 0.05)) for v in variants])
    text = summary_markdown(results, variants, SETTINGS, images=30, patients=6)
    row = next(line for line in text.splitlines() if line.startswith("| op"))
    assert row.startswith(r"| op\|\*new\* | ") and row.count(" | ") == 7  # 8 cells, as the header
    assert text.strip().splitlines()[-1].startswith(r"PLA difference (best MPCS variant "
                                                    r"op\|\*new\* − imagenet)")


def test_run_writes_results_and_resumes_without_redoing(tiny_breakhis: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # "imagenet" here is a second random init (no offline ImageNet weights for resnet10t):
    # the table and the paired comparison are what is tested.
    calls: list[list[str]] = []
    real_pretrain = rp.pretrain

    def spy(cfg, data_dir, run_dir, **kw):
        calls.append(sorted(cfg["data"]["patients"]))
        return real_pretrain(cfg, data_dir, run_dir, **kw)

    monkeypatch.setattr(rp, "pretrain", spy)
    out = tmp_path / "probe"
    table = run_real_probe(tiny_breakhis, out, SETTINGS, VARIANTS, progress=False)
    assert len(table) == 2 * 2 * 3 and len(calls) == 4
    assert table["ila"].between(0, 1).all() and table["pla"].between(0, 1).all()
    folds = probe_folds(*_labels_patients(tiny_breakhis), 2, 2, 0)
    patients = _labels_patients(tiny_breakhis)[1]
    for (_, _, _, test), used in zip(folds, calls, strict=True):
        assert not set(used) & set(patients[test])  # no test patient in pre-training
        assert len(used) == 4 - len(set(patients[test]))
    summary = (out / "summary.md").read_text()
    assert "| mpcs |" in summary and summary.strip().splitlines()[-1].startswith(
        "PLA difference (best MPCS variant mpcs − imagenet)")
    assert not any((out / "runs").rglob("last.pt"))  # features kept, checkpoints not
    # a second call finds every cell done
    again = run_real_probe(tiny_breakhis, out, SETTINGS, VARIANTS, progress=False)
    assert len(calls) == 4
    pd.testing.assert_frame_equal(again, table)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["input_size"] == 32 and set(settings["variants"]) == {
        "random init", "imagenet", "mpcs"}


def test_other_settings_or_a_changed_variant_are_refused(tiny_breakhis: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "probe"
    run_real_probe(tiny_breakhis, out, SETTINGS, VARIANTS[:2], progress=False)
    with pytest.raises(ConfigError, match="input_size"):
        run_real_probe(tiny_breakhis, out, ProbeSettings(**{**SETTINGS.__dict__,
                                                            "input_size": 48}),
                       VARIANTS[:2], progress=False)
    with pytest.raises(ConfigError, match="variant 'imagenet'"):
        run_real_probe(tiny_breakhis, out, SETTINGS,
                       [VARIANTS[0], Variant("imagenet", "mpcs", "cpu-small")], progress=False)
    with pytest.raises(ConfigError, match="unknown preset"):
        run_real_probe(tiny_breakhis, tmp_path / "o2", SETTINGS,
                       [Variant("x", "mpcs", "no-such-preset")], progress=False)


def _labels_patients(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from mpcs.data.datasets.breakhis import scan_breakhis

    m = scan_breakhis(root)
    m = m[m["magnification"] == "200X"].reset_index(drop=True)
    return m["label"].to_numpy(), m["patient_id"].astype(str).to_numpy()


def test_cli_prints_the_table(tiny_breakhis: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    code = main(["real-probe", "--data", str(tiny_breakhis), "--out", str(tmp_path / "o"),
                 "--magnification", "200X", "--folds", "2", "--repeats", "1", "--encoder",
                 "resnet10t", "--input-size", "32", "--variant", "random init=none",
                 "--variant", "imagenet=none", "--quiet"])
    assert code == 0
    assert "| random init |" in capsys.readouterr().out


def test_real_folds_of_breakhis_dev() -> None:
    data = SHARED_DATA / "breakhis-dev"
    if not data.is_dir():
        pytest.skip(f"real BreakHis development set not found at {data}")
    from mpcs.data.datasets.breakhis import scan_breakhis

    m = scan_breakhis(data)
    m = m[m["magnification"] == "100X"]
    assert len(m) == 144 and m["patient_id"].nunique() == 14
    folds = probe_folds(m["label"].to_numpy(), m["patient_id"].to_numpy(), 5, 3, 0)
    assert len(folds) == 15 and all(len(te) > 0 for *_, te in folds)


def test_finetune_variant_fine_tunes_per_fold_with_held_out_patients(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mpcs.data.synth.breakhis import SynthConfig, write_breakhis

    data = write_breakhis(tmp_path_factory.mktemp("ft8"), SynthConfig(
        patients=8, samples_per_patient=1, image_size=(48, 32), seed=2), progress=False)
    seen: list[tuple[set, set, set]] = []
    real = rp.finetune

    def spy(cfg, fit, val, test, run_dir, **kw):
        seen.append(tuple(set(df["patient_id"]) for df in (fit, val, test)))
        assert cfg["train"]["min_steps"] == 3 and cfg["data"]["input_size"] == 32
        return real(cfg, fit, val, test, run_dir, **kw)

    monkeypatch.setattr(rp, "finetune", spy)
    variant = parse_variant("ft=finetune-cpu-small,train.epochs=1,train.min_steps=3,"
                            "train.batch_size=2,schedule.warmup_epochs=0")
    assert variant.init == "finetune"
    # fine-tuning starts from ImageNet: EfficientNet-Lite0's offline weights (dev extra)
    settings = ProbeSettings(magnification="40X", folds=2, repeats=1,
                             encoder="tf_efficientnet_lite0", input_size=32)
    table = run_real_probe(data, tmp_path / "o", settings, [Variant("imagenet", "none"),
                                                            variant], progress=False)
    assert len(seen) == 2 and len(table) == 4
    for fit, val, test in seen:
        assert not (fit & val) and not (fit & test) and not (val & test)
        assert len(val) == 2 and len(fit) == 2  # one patient per class held out
    assert not any((tmp_path / "o" / "runs").rglob("best.pt"))
