"""Patient-level stratified cross-validation splits and nested label fractions."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.datasets.breakhis_names import SUBTYPE_LABEL, parse_filename
from mpcs.data.splits import (
    Splits,
    check_splits,
    dataset_fingerprint,
    make_splits,
    relative_paths,
)
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis

SUBTYPE_CODES = tuple(SUBTYPE_LABEL)
ROOT = "/data/breast"


# --------------------------------------------------------------------------- helpers


def table(per_subtype: dict[str, int], images: int | list[int] = 4) -> pd.DataFrame:
    """A manifest without files: ``per_subtype[s]`` patients of subtype ``s``."""
    rows, index = [], 0
    for subtype, count in per_subtype.items():
        label = SUBTYPE_LABEL[subtype]
        for _ in range(count):
            n = images if isinstance(images, int) else images[index % len(images)]
            patient = f"14-{1000 + index}"
            for i in range(n):
                mag = MAGNIFICATIONS[i % len(MAGNIFICATIONS)]
                rows.append({
                    "path": f"{ROOT}/{label}/SOB/x/SOB_{label[0].upper()}_{subtype}_{patient}/"
                            f"{mag}/SOB_{label[0].upper()}_{subtype}-{patient}-"
                            f"{mag[:-1]}-{i + 1:03d}.png",
                    "patient_id": patient, "label": label, "subtype": subtype,
                    "magnification": mag,
                })
            index += 1
    df = pd.DataFrame(rows)
    df.attrs["root"] = ROOT
    return df


def patient_column(manifest: pd.DataFrame, column: str) -> dict[str, str]:
    return manifest.groupby("patient_id")[column].first().to_dict()


def assert_partition(splits: Splits, manifest: pd.DataFrame) -> None:
    """No patient in two parts; each patient tests once; every fold covers everyone."""
    everyone = set(manifest["patient_id"])
    tested: Counter[str] = Counter()
    for k in range(splits.folds):
        fold = splits.fold(k)
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(len(p) for p in parts) == len(everyone)
        assert set.union(*parts) == everyone
        tested.update(fold.test)
    assert set(tested) == everyone and set(tested.values()) == {1}


def assert_fractions(splits: Splits, manifest: pd.DataFrame, fractions: list[float]) -> None:
    """Nested label fractions of size ceil(f * n) per stratum, all from training patients."""
    rel = relative_paths(manifest)
    info = manifest.assign(relpath=rel.to_numpy()).set_index("relpath")
    strata = splits.fraction_strata
    for k in range(splits.folds):
        train = set(splits.fold(k).train)
        train_images = info[info["patient_id"].isin(train)]
        sizes = train_images.groupby(strata).size()
        previous: set[str] = set()
        for f in sorted(fractions):
            chosen = splits.labelled_images(k, f)
            assert len(chosen) == len(set(chosen))
            assert previous <= set(chosen)
            got = info.loc[chosen].groupby(strata).size()
            expected = sizes.map(lambda n, f=f: math.ceil(round(f * n, 9)))
            pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(),
                                           check_names=False)
            previous = set(chosen)
        assert previous == set(train_images.index) or max(fractions) < 1


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """40 synthetic patients, 5 per subtype, 2 samples x 4 magnifications each."""
    root = write_breakhis(tmp_path_factory.mktemp("splits"),
                          SynthConfig(patients=40, samples_per_patient=2, image_size=(16, 16)),
                          progress=False, workers=1)
    return scan_breakhis(root)


@pytest.fixture(scope="module")
def synth_splits(synth_manifest: pd.DataFrame) -> Splits:
    return make_splits(synth_manifest, folds=5, seed=0)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_splits_are_patient_level_and_subtype_stratified(
        synth_manifest: pd.DataFrame, synth_splits: Splits) -> None:
    splits = synth_splits
    assert splits.stratify_by == "subtype" and splits.notes == []
    assert_partition(splits, synth_manifest)
    subtype = patient_column(synth_manifest, "subtype")
    for k in range(5):
        fold = splits.fold(k)
        # 40 patients: 8 test (20%), 8 val (20%), 24 train (60%).
        assert (len(fold.train), len(fold.val), len(fold.test)) == (24, 8, 8)
        # 5 patients per subtype: one per subtype in test and in val, three in train.
        assert Counter(subtype[p] for p in fold.test) == dict.fromkeys(SUBTYPE_CODES, 1)
        assert Counter(subtype[p] for p in fold.val) == dict.fromkeys(SUBTYPE_CODES, 1)
        assert Counter(subtype[p] for p in fold.train) == dict.fromkeys(SUBTYPE_CODES, 3)
        counts = splits.fold_splits[k].counts
        assert counts["train"]["images"] == 24 * 8
        assert counts["test"]["benign"] == {"patients": 4, "images": 32}


def test_counts_and_fingerprint(synth_manifest: pd.DataFrame, synth_splits: Splits) -> None:
    counts = synth_splits.counts
    assert counts["images"] == len(synth_manifest) == 320
    assert counts["patients"] == 40
    assert counts["classes"]["malignant"] == {"patients": 20, "images": 160}
    assert counts["subtypes"]["PT"] == {"patients": 5, "images": 40}
    assert synth_splits.fingerprint == dataset_fingerprint(synth_manifest)
    # The fingerprint ignores where the data set lives and the row order.
    moved = synth_manifest.sample(frac=1.0, random_state=1)
    moved["path"] = ["/elsewhere/breast/" + p for p in relative_paths(moved)]
    moved.attrs["root"] = "/elsewhere/breast"
    assert dataset_fingerprint(moved) == synth_splits.fingerprint


def test_same_seed_same_json_different_seed_different(synth_manifest: pd.DataFrame,
                                                      synth_splits: Splits) -> None:
    again = make_splits(synth_manifest, folds=5, seed=0)
    assert again.to_json() == synth_splits.to_json()
    other = make_splits(synth_manifest, folds=5, seed=1)
    assert other.to_json() != synth_splits.to_json()
    assert [other.fold(k).test for k in range(5)] != [synth_splits.fold(k).test
                                                       for k in range(5)]


def test_label_fractions_nested_stratified_and_sized(synth_manifest: pd.DataFrame,
                                                     synth_splits: Splits) -> None:
    fractions = [0.05, 0.1, 0.2, 1 / 3, 0.4, 0.6, 0.8, 1.0]
    assert synth_splits.fraction_strata == ["subtype", "magnification"]
    assert_fractions(synth_splits, synth_manifest, fractions)
    # 24 train patients x 8 images, 32 strata of 6 images: ceil(0.2 * 6) = 2 per stratum.
    assert len(synth_splits.labelled_images(0, 0.2)) == 64
    assert len(synth_splits.labelled_images(0, 1.0)) == 192
    # 0.6 * 5 = 3.0000000000000004 in floating point; still 3, not 4.
    assert math.ceil(round(0.6 * 5, 9)) == 3
    listed = json.loads(synth_splits.to_json())["fold_splits"][0]["labelled_images"]
    assert listed == {"0.2": 64, "0.4": 96, "0.6": 128, "0.8": 160, "1": 192}


def test_label_fractions_without_magnification(synth_manifest: pd.DataFrame) -> None:
    splits = make_splits(synth_manifest, seed=3, fraction_by_magnification=False)
    assert splits.fraction_strata == ["subtype"]
    assert_fractions(splits, synth_manifest, [0.05, 0.2, 0.5, 1.0])
    # 3 train patients x 8 images = 24 per subtype; ceil(0.05 * 24) = 2; 8 subtypes.
    assert len(splits.labelled_images(2, 0.05)) == 16


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "x"])
def test_invalid_fractions_are_config_errors(synth_splits: Splits, bad: object) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        synth_splits.labelled_images(0, bad)  # type: ignore[arg-type]


def test_invalid_arguments(synth_manifest: pd.DataFrame, synth_splits: Splits) -> None:
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        make_splits(synth_manifest, label_fractions=(0.2, 1.2))
    with pytest.raises(ConfigError, match="folds"):
        make_splits(synth_manifest, folds=1)
    with pytest.raises(ConfigError, match="seed"):
        make_splits(synth_manifest, seed=-1)
    with pytest.raises(ConfigError, match="val_fraction_of_rest"):
        make_splits(synth_manifest, val_fraction_of_rest=1.0)
    with pytest.raises(ValueError, match="fold 5 does not exist"):
        synth_splits.fold(5)


def test_no_validation_part(synth_manifest: pd.DataFrame) -> None:
    splits = make_splits(synth_manifest, val_fraction_of_rest=0.0)
    assert all(splits.fold(k).val == () and len(splits.fold(k).train) == 32 for k in range(5))
    assert_partition(splits, synth_manifest)


def test_frame_selects_manifest_rows(synth_manifest: pd.DataFrame,
                                     synth_splits: Splits) -> None:
    test = synth_splits.frame(synth_manifest, 1, "test")
    assert set(test["patient_id"]) == set(synth_splits.fold(1).test) and len(test) == 64
    few = synth_splits.frame(synth_manifest, 1, "train", fraction=0.4)
    assert sorted(relative_paths(few)) == synth_splits.labelled_images(1, 0.4)
    with pytest.raises(ValueError, match="train part"):
        synth_splits.frame(synth_manifest, 1, "val", fraction=0.4)


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path: Path, synth_manifest: pd.DataFrame,
                              synth_splits: Splits) -> None:
    path = synth_splits.save(tmp_path / "sub" / "splits.json")
    text = path.read_text()
    assert text == synth_splits.to_json()
    assert text.startswith('{\n "format": "mpcs-splits",\n "version": 1,')
    entry = json.loads(text)["fold_splits"][0]
    assert list(entry)[:3] == ["fold", "counts", "labelled_images"]
    loaded = Splits.load(path, synth_manifest)
    assert loaded == synth_splits
    assert Splits.load(path) == synth_splits
    assert loaded.labelled_images(3, 0.2) == synth_splits.labelled_images(3, 0.2)


def test_load_with_changed_data_set_fails_on_fingerprint(
        tmp_path: Path, synth_manifest: pd.DataFrame, synth_splits: Splits) -> None:
    path = synth_splits.save(tmp_path / "splits.json")
    dropped = synth_manifest[synth_manifest["patient_id"] != synth_splits.fold(0).test[0]]
    made = (len(synth_manifest), synth_manifest["patient_id"].nunique())
    now = (len(dropped), dropped["patient_id"].nunique())
    with pytest.raises(DataError, match=rf"different data set \(it was made for {made[0]} "
                       rf"images of {made[1]} patients; this one has {now[0]} images of "
                       rf"{now[1]} patients, or other files: fingerprint [0-9a-f]{{40}} != "
                       rf"[0-9a-f]{{40}}\); make splits for this data with `mpcs splits"):
        Splits.load(path, dropped)


def test_hand_edited_patient_in_train_and_test(tmp_path: Path, synth_manifest: pd.DataFrame,
                                               synth_splits: Splits) -> None:
    data = json.loads(synth_splits.to_json())
    intruder = data["fold_splits"][2]["train"][0]
    data["fold_splits"][2]["test"].append(intruder)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data, indent=1))
    with pytest.raises(DataError, match=f"fold 2: patient {intruder} is in both train and test"):
        Splits.load(path, synth_manifest)


def test_check_splits_finds_other_violations(synth_splits: Splits) -> None:
    data = json.loads(synth_splits.to_json())
    # A patient dropped from one fold's val part.
    gone = data["fold_splits"][1]["val"].pop()
    with pytest.raises(DataError, match=f"fold 1: patient {gone} is in none of its parts"):
        check_splits(Splits.from_dict(data))
    # A patient that tests in two folds.
    data = json.loads(synth_splits.to_json())
    twice = data["fold_splits"][0]["test"][0]
    part = "val" if twice in data["fold_splits"][1]["val"] else "train"
    data["fold_splits"][1][part].remove(twice)
    data["fold_splits"][1]["test"].append(twice)
    with pytest.raises(DataError, match=f"patient {twice} is in the test part of folds 0 and 1"):
        check_splits(Splits.from_dict(data))
    # A training image of a patient who is not in the train part.
    data = json.loads(synth_splits.to_json())
    order = data["fold_splits"][0]["train_order"]
    stray = data["fold_splits"][1]["train_order"]
    image = next(p for paths in stray.values() for p in paths
                 if parse_filename(p).patient_id in data["fold_splits"][0]["test"])
    next(iter(order.values())).append(image)
    with pytest.raises(DataError, match="not in the train part"):
        check_splits(Splits.from_dict(data))


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        Splits.load(tmp_path / "nope.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="not an mpcs splits file"):
        Splits.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="cannot read"):
        Splits.load(tmp_path / "broken.json")


# --------------------------------------------------------------------------- stratification


def test_impossible_stratification_names_the_class() -> None:
    manifest = table({"A": 4, "F": 4, "DC": 2, "LC": 1})
    with pytest.raises(ConfigError, match="class malignant has 3 patients < 5 folds"):
        make_splits(manifest, folds=5)
    with pytest.raises(ConfigError, match="only class benign"):
        make_splits(table({"A": 6, "F": 4}), folds=5)


def test_label_fallback_on_small_subtypes(caplog: pytest.LogCaptureFixture) -> None:
    manifest = table({"A": 5, "F": 5, "PT": 2, "DC": 6, "LC": 5})
    with caplog.at_level(logging.WARNING, logger="mpcs.data.splits.make"):
        splits = make_splits(manifest, folds=5, seed=0)
    assert splits.stratify_by == "label"
    assert splits.notes[0] == "stratified by label: subtype PT has 2 patients < 5 folds"
    assert "subtype PT has 2 patients" in caplog.text
    assert splits.fraction_strata == ["label", "magnification"]
    assert_partition(splits, manifest)


BREAKHIS_PATIENTS = {"A": 4, "F": 10, "PT": 7, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}


def test_breakhis_like_counts_auto_falls_back_but_subtype_can_be_forced() -> None:
    manifest = table(BREAKHIS_PATIENTS, images=[3, 5])
    auto = make_splits(manifest, folds=5, seed=0)
    assert auto.stratify_by == "label"
    assert auto.notes == ["stratified by label: subtype A has 4 patients < 5 folds"]
    forced = make_splits(manifest, folds=5, seed=0, stratify="subtype")
    assert forced.stratify_by == "subtype"
    assert forced.notes[0].startswith("stratified by subtype although subtype A has 4 patients")
    assert_partition(forced, manifest)
    subtype = patient_column(manifest, "subtype")
    for k in range(5):
        fold = forced.fold(k)
        tested = Counter(subtype[p] for p in fold.test)
        for code, n in BREAKHIS_PATIENTS.items():
            assert n // 5 <= tested.get(code, 0) <= -(-n // 5)
    label = make_splits(manifest, folds=5, seed=0, stratify="label")
    assert label.stratify_by == "label" and label.notes == []
    with pytest.raises(ConfigError, match="stratify must be one of"):
        make_splits(manifest, stratify="patient")
    with pytest.raises(ConfigError, match="every subtype has fewer patients"):
        make_splits(table({"A": 3, "F": 3, "DC": 3, "LC": 3}), folds=5, stratify="subtype")


def test_multi_subtype_patient_is_stratified_by_its_main_subtype() -> None:
    manifest = table({"A": 5, "DC": 5, "LC": 5})
    patient = manifest["patient_id"].iloc[-1]  # an LC patient
    rows = manifest[manifest["patient_id"] == patient].iloc[:1].copy()
    rows["subtype"] = "DC"
    rows["path"] = rows["path"].str.replace("-001.png", "-009.png")
    mixed = pd.concat([manifest, rows], ignore_index=True)
    mixed.attrs["root"] = ROOT
    splits = make_splits(mixed, folds=5)
    assert splits.stratify_by == "subtype"
    assert any(f"patient {patient} has images of subtypes DC, LC; stratified as LC" == n
               for n in splits.notes)


# --------------------------------------------------------------------------- real subset


def test_real_subset_falls_back_to_label(shared_breakhis: Path) -> None:
    manifest = scan_breakhis(shared_breakhis)
    splits = make_splits(manifest, folds=5, seed=0)
    assert splits.stratify_by == "label"
    assert splits.notes and splits.notes[0].startswith("stratified by label: subtype ")
    assert splits.notes[0].endswith("< 5 folds")
    assert_partition(splits, manifest)
    assert_fractions(splits, manifest, [0.05, 0.2, 0.5, 1.0])
    label = patient_column(manifest, "label")
    n = len(label)  # 16 patients, 8 per class
    for k in range(5):
        fold = splits.fold(k)
        assert abs(len(fold.test) - 0.2 * n) <= 1
        assert abs(len(fold.val) - 0.2 * n) <= 1
        assert abs(len(fold.train) - 0.6 * n) <= 1.5
        classes = Counter(label[p] for p in fold.test)
        assert set(classes.values()) <= {1, 2} and set(classes) == {"benign", "malignant"}
    assert Splits.from_dict(json.loads(splits.to_json())) == splits


# --------------------------------------------------------------------------- property test


def _check_balanced(parts: list[list[str]], strata: dict[str, str]) -> None:
    """Each stratum's count in each part is floor or ceil of its share (StratifiedKFold)."""
    total = Counter(strata.values())
    for part in parts:
        got = Counter(strata[p] for p in part)
        for s, n in total.items():
            share = n / len(parts)
            assert math.floor(share) <= got.get(s, 0) <= math.ceil(share)


def _check_val_share(splits: Splits, k: int, strata: dict[str, str]) -> None:
    """A stratified val part holds each stratum's share of the non-test patients, +-1."""
    fold = splits.fold(k)
    rest = Counter(strata[p] for p in fold.train + fold.val)
    val = Counter(strata[p] for p in fold.val)
    n_rest = sum(rest.values())
    for s, n in rest.items():
        assert abs(val.get(s, 0) - len(fold.val) * n / n_rest) < 1 + 1e-9


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(0, 7), min_size=8, max_size=8),
    images=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    folds=st.integers(2, 5),
    seed=st.integers(0, 2**32 - 1),
    stratify=st.sampled_from(["auto", "subtype"]),
)
def test_property_invariants(counts: list[int], images: list[int], folds: int,
                             seed: int, stratify: str) -> None:
    per_subtype = dict(zip(SUBTYPE_CODES, counts, strict=True))
    benign = sum(n for s, n in per_subtype.items() if SUBTYPE_LABEL[s] == "benign")
    malignant = sum(per_subtype.values()) - benign
    assume(min(benign, malignant) >= max(folds, 3))
    present = [n for n in counts if n]
    assume(stratify == "auto" or max(present) >= folds)
    manifest = table({s: n for s, n in per_subtype.items() if n}, images)
    splits = make_splits(manifest, folds=folds, seed=seed, stratify=stratify)
    assert_partition(splits, manifest)
    expected = "subtype" if stratify == "subtype" or min(present) >= folds else "label"
    assert splits.stratify_by == expected
    strata = patient_column(manifest, splits.stratify_by)
    _check_balanced([list(splits.fold(k).test) for k in range(folds)], strata)
    for k in range(folds):
        if not any(note.startswith(f"fold {k}: validation") for note in splits.notes):
            _check_val_share(splits, k, strata)
    assert_fractions(splits, manifest, [0.05, 0.3, 1.0])
    check_splits(Splits.from_dict(json.loads(splits.to_json())), manifest)
