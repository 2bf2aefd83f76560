"""Shared fixtures: tiny synthetic data sets and the real samples in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpcs.data.synth.breakhis import SynthConfig, write_breakhis

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Smallest settings that still exercise every part of pre-training.
TINY_OVERRIDES = [
    "data.input_size=32",
    "model.head_hidden=[32]",
    "model.head_out=16",
    "train.batch_size=4",
    "train.epochs=1",
    "schedule.warmup_epochs=0",
]


@pytest.fixture(scope="session")
def tiny_breakhis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 patients x 3 samples x 4 magnifications of 48x32 synthetic images."""
    out = tmp_path_factory.mktemp("synth")
    return write_breakhis(out, SynthConfig(patients=4, samples_per_patient=3,
                                           image_size=(48, 32), seed=1), progress=False)


@pytest.fixture
def shared_breakhis() -> Path:
    path = SHARED_DATA / "breakhis"
    if not path.is_dir():
        pytest.skip(f"real BreakHis samples not found at {path} (only in the project's "
                    "workspace)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write decoded-image caches into the user's home during tests."""
    monkeypatch.setenv("MPCS_CACHE", str(tmp_path / "mpcs-cache"))
