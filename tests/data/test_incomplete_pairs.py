"""Real collections are incomplete: pairs from samples with only some magnifications, zoom
pairs from any magnification, and both kinds of pairs in one run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpcs.config import resolve
from mpcs.core.errors import ConfigError, DataError
from mpcs.data.pairs.breakhis import PairData, pair_samples, present_magnifications
from mpcs.data.pairs.samplers import PresentMagnifications, RowSampler, create_pair_sampler
from mpcs.data.pairs.sources import (
    MixedPairData,
    MixedRowSampler,
    create_row_sampler,
    load_scale_source,
)
from mpcs.data.pairs.zoom import zoom_image_table
from mpcs.engine.distributed import SINGLE
from mpcs.engine.pair_data import epoch_plan, find_pair_sources
from mpcs.engine.pair_data import load_pair_data as _load_pair_data
from mpcs.engine.pretrain import pretrain
from tests.conftest import SHARED_DATA, TINY_OVERRIDES


@pytest.fixture(scope="module")
def holey_breakhis(tmp_path_factory: pytest.TempPathFactory, tiny_breakhis: Path) -> Path:
    """tiny_breakhis (4 patients x samples 001-003 x 4 magnifications) with holes: sample 002
    keeps only 200X and 400X, sample 003 only 40X and 100X, and the first patient's sample
    003 only 40X."""
    root = tmp_path_factory.mktemp("holes") / "BreaKHis_v1"
    shutil.copytree(tiny_breakhis, root)
    for png in root.rglob("*.png"):
        mag, seq = png.stem.split("-")[-2:]
        if (seq == "002" and mag in ("40", "100")) or (seq == "003" and mag in ("200", "400")):
            png.unlink()
    first = sorted(root.rglob("*-100-003.png"))[0]
    first.unlink()
    return root


@pytest.mark.parametrize(("strategy", "expected"),
                         [("fixed", 8), ("ordered", 11), ("random", 11), ("fp", 8)])
def test_incomplete_samples_pair_when_they_have_what_the_strategy_needs(
        holey_breakhis: Path, strategy: str, expected: int) -> None:
    assert len(pair_samples(holey_breakhis, strategy=strategy)) == 4  # the paper: complete only
    samples = pair_samples(holey_breakhis, strategy=strategy, complete_only=False)
    assert len(samples) == expected
    present = present_magnifications(samples)
    assert present.sum(axis=1).min() >= 2
    if strategy in ("fixed", "fp"):
        assert present[:, 2:].all()


def test_incomplete_pairs_are_drawn_among_the_magnifications_a_sample_has(
        holey_breakhis: Path) -> None:
    samples = pair_samples(holey_breakhis, strategy="ordered", complete_only=False)
    data = PairData(samples, 16, cache_dir=None, progress=False, complete_only=False,
                    strategy="ordered")
    sampler = data.row_sampler(create_pair_sampler("ordered"))
    assert isinstance(sampler, PresentMagnifications)
    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(len(data)), 50)
    first, second = sampler.sample_rows(index, rng)
    have = data.present[index]
    rows = np.arange(len(index))
    assert have[rows, first].all() and have[rows, second].all()
    assert (first != second).all()
    # a sample with only 40X and 100X gives 40X -> 100X, one with 200X and 400X both orders
    only_low = ~have[:, 2] & ~have[:, 3]
    assert (first[only_low] == 0).all() and (second[only_low] == 1).all()
    only_high = ~have[:, 0] & ~have[:, 1]
    assert set(zip(first[only_high], second[only_high], strict=True)) == {(2, 3), (3, 2)}
    v1, v2 = data.views(index[:6], first[:6], second[:6])
    assert v1.shape == v2.shape == (6, 3, 16, 16)


def test_no_pairable_sample_says_what_would_help(holey_breakhis: Path, tmp_path: Path) -> None:
    only_low = tmp_path / "BreaKHis_v1"
    shutil.copytree(holey_breakhis, only_low)
    for png in only_low.rglob("*.png"):
        if png.stem.split("-")[-2] in ("200", "400") or png.stem.endswith("-001"):
            png.unlink()
    with pytest.raises(DataError, match="pairs.complete_only=false pairs them"):
        pair_samples(only_low)
    with pytest.raises(DataError, match="200X and 400X"):
        pair_samples(only_low, strategy="fixed", complete_only=False)
    assert len(pair_samples(only_low, strategy="ordered", complete_only=False)) == 3


def test_pretrain_on_incomplete_samples_logs_counts(holey_breakhis: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "pairs.strategy=fixed",
                                                 "pairs.complete_only=false"])
    with caplog.at_level("INFO", logger="mpcs.data.pairs.breakhis"):
        summary = pretrain(cfg, holey_breakhis, tmp_path / "run", progress=False)
    assert summary["pair_samples"] == 8 and summary["global_step"] == 2
    assert "8 samples for strategy fixed (4 at all four magnifications, 4 with fewer)" in \
        caplog.text


def test_real_fixed_pairs_of_breakhis_dev(tmp_path: Path) -> None:
    data = SHARED_DATA / "breakhis-dev"
    if not data.is_dir():
        pytest.skip(f"real BreakHis development set not found at {data}")
    samples = pair_samples(data, strategy="fixed", complete_only=False)
    assert len(samples) == 17 and set(samples["patient_id"]) == {"14-19979"}
    ordered = pair_samples(data, strategy="ordered", complete_only=False)
    # 14-19979 (200X-400X), 14-29315EF (100X-200X), four patients with one 40X-100X sample
    assert len(ordered) == 17 + 10 + 4
    assert len(pair_samples(data, strategy="random", complete_only=False)) == 38
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "pairs.strategy=fixed",
                                                 "pairs.complete_only=false",
                                                 f"data.cache_dir={tmp_path / 'cache'}"])
    summary = pretrain(cfg, data, tmp_path / "run", progress=False)
    assert summary["pair_samples"] == 17 and np.isfinite(summary["final_loss"])


# ------------------------------------------------------------------- zoom, any magnification


@pytest.fixture(scope="module")
def only_100x(tmp_path_factory: pytest.TempPathFactory, tiny_breakhis: Path) -> Path:
    """tiny_breakhis with its 100X images only."""
    root = tmp_path_factory.mktemp("100x") / "BreaKHis_v1"
    shutil.copytree(tiny_breakhis, root)
    for png in root.rglob("*.png"):
        if png.parent.name != "100X":
            png.unlink()
    return root


def test_zoom_on_a_100x_only_tree_takes_its_100x_images(only_100x: Path, tmp_path: Path) -> None:
    table = zoom_image_table(only_100x)
    assert len(table) == 12 and set(table["magnification"]) == {"100X"}
    patients = sorted(set(table["patient_id"]))[:3]
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "data.source=zoom",
                                                 "pairs.strategy=continuous",
                                                 "pairs.scale_range=[1.0, 2.0]",
                                                 f"data.patients={json.dumps(patients)}"])
    summary = pretrain(cfg, only_100x, tmp_path / "run", progress=False)
    assert summary["pair_samples"] == 9
    assert (tmp_path / "run" / "pretrain_patients.txt").read_text().split() == patients


def test_zoom_refuses_an_unknown_patient(tiny_breakhis: Path) -> None:
    cfg = resolve(overrides=["data.source=zoom", "data.input_size=16",
                             "pairs.scale_range=[1.0, 2.0]", "pairs.strategy=continuous"])
    cfg["data"]["patients"] = [*sorted(set(zoom_image_table(tiny_breakhis)["patient_id"])),
                               "99-99999"]
    with pytest.raises(DataError, match="patients not in the data set: 99-99999"):
        load_scale_source(cfg, tiny_breakhis, progress=False)


def test_zoom_magnification_missing_at_one_patient(tmp_path: Path, tiny_breakhis: Path) -> None:
    root = tmp_path / "BreaKHis_v1"
    shutil.copytree(tiny_breakhis, root)
    victim = sorted(root.rglob("100X"))[0]
    patient = victim.parent.name.split("_")[-1]
    shutil.rmtree(victim)
    cfg = resolve(overrides=["data.source=zoom", "data.zoom_magnification=100X",
                             "data.input_size=16", "pairs.scale_range=[1.0, 2.0]",
                             "pairs.strategy=continuous"])
    cfg["data"]["patients"] = sorted(set(zoom_image_table(root, "all")["patient_id"]))
    with pytest.raises(DataError,
                       match=f"have no image at 100X: {patient}.*zoom_magnification=all"):
        load_scale_source(cfg, root, progress=False)
    cfg["data"]["zoom_magnification"] = "lowest"
    assert len(load_scale_source(cfg, root, progress=False)) == 12
    with pytest.raises(ConfigError, match="needs a BreakHis-layout folder"):
        zoom_image_table(next(root.rglob("40X")), "100X")


# --------------------------------------------------------------------------- mixed sources


def test_mixed_epoch_takes_each_sources_share() -> None:
    class Part:
        def __init__(self, n: int) -> None:
            self.samples = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)]})
            self.dropped: list = []

        def __len__(self) -> int:
            return len(self.samples)

    mixed = MixedPairData(["breakhis", "zoom"], [Part(10), Part(30)], [3.0, 1.0])
    assert len(mixed) == 40 and list(mixed.fractions) == [0.75, 0.25]
    sampler = MixedRowSampler([RowSampler(create_pair_sampler("fixed"))] * 2, mixed.sizes,
                              mixed.fractions)
    order = sampler.epoch_order(len(mixed), np.random.default_rng(0))
    assert len(order) == 40 and (order < 10).sum() == 30  # 75 %: three passes over 10 rows
    assert np.bincount(order[order < 10]).tolist() == [3] * 10
    assert len(set(order[order >= 10])) == 10  # 25 %: 10 distinct rows of the 30
    first, second = sampler.sample_rows(order[:8], np.random.default_rng(1))
    assert first.shape == (8, 3) and set(first[:, 0]) == {5.0} and set(second[:, 0]) == {10.0}


def test_mixed_breakhis_and_zoom_pretrain(tiny_breakhis: Path, tmp_path: Path) -> None:
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "data.source=[breakhis, zoom]",
                                                 "data.source_weights=[1, 1]",
                                                 "pairs.strategy=continuous",
                                                 "pairs.scale_range=[1.0, 4.0]"])
    summary = pretrain(cfg, tiny_breakhis, tmp_path / "run", progress=False)
    assert summary["pair_samples"] == 12 + 12 and np.isfinite(summary["final_loss"])
    cfg2 = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "data.source=[breakhis, zoom]",
                                                  "pairs.strategy=ordered"])
    data = _load_pair_data(cfg2, find_pair_sources(cfg2, tiny_breakhis, False), False, SINGLE)
    sampler = create_row_sampler(cfg2, data)
    plan = epoch_plan(len(data), [(0, 24)], sampler, np.random.default_rng(0))[0]
    v1, v2 = data.views(plan.index, plan.mag1, plan.mag2)
    assert v1.shape == v2.shape == (24, 3, 32, 32) and v1.dtype == v2.dtype
    assert 0.0 <= float(v1.min()) and float(v1.max()) <= 1.0
    assert not np.allclose(v1.numpy(), v2.numpy())


@pytest.mark.parametrize("override", ["data.source=[breakhis, breakhis]",
                                      "data.source=[breakhis, tiff]",
                                      "data.source_weights=[1, 2]",
                                      "data.source=[zoom, wsi]\ndata.source_weights=[1]"])
def test_mixed_source_settings_are_checked(override: str) -> None:
    with pytest.raises(ConfigError):
        resolve(overrides=override.split("\n"))
