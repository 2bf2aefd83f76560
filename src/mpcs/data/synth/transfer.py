"""Synthetic BACH and BCC stand-ins in their official layouts, from the H&E generator.

Each image is one tissue region of :mod:`mpcs.data.synth` rendered at its 200X field: the
class sets the region's grade (glands in stroma for low grades; crowded, larger, darker,
irregular nuclei for high grades), and each image draws its own stain, cellularity and focus,
so classes overlap in every single cue. Output is deterministic for a given seed.

* :func:`write_bach` -> ``OUT/ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/``
  ``{n,b,is,iv}NNN.tif`` and ``microscopy_ground_truth.csv``;
* :func:`write_bcc` -> ``OUT/bcc/ytma<N>_<date>_<benign|malignant><K>_ccd.tif``.

Example:
    >>> root = write_bach("/tmp/synth", images_per_class=3, image_size=(512, 384))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mpcs.core.errors import ConfigError
from mpcs.data.datasets.bach import BACH_CLASSES, BACH_IMAGE_SIZE, GROUND_TRUTH
from mpcs.data.datasets.bcc import BCC_CLASSES, BCC_IMAGE_SIZE
from mpcs.data.synth.breakhis import check_image_size
from mpcs.data.synth.tissue import build_tissue, region_params, render, stain_vectors

log = logging.getLogger(__name__)

_MARKER = "mpcs-synth.json"
#: Grade range (0 = clearly benign ... 1 = clearly malignant) of each class.
BACH_GRADES: Mapping[str, tuple[float, float]] = {
    "Normal": (0.0, 0.2), "Benign": (0.2, 0.45), "InSitu": (0.5, 0.75), "Invasive": (0.75, 1.0)}
BACH_PREFIX: Mapping[str, str] = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
BCC_GRADES: Mapping[str, tuple[float, float]] = {"benign": (0.0, 0.45), "malignant": (0.55, 1.0)}


def render_image(grade_range: tuple[float, float], size: tuple[int, int], seed: int,
                 index: int) -> np.ndarray:
    """One synthetic H&E image ``[H, W, 3]`` uint8 of a grade drawn in ``grade_range``."""
    rng = np.random.default_rng([seed, index])
    profile = {"grade": rng.uniform(*grade_range), "cellularity": rng.uniform(0.8, 1.2),
               "hema": rng.uniform(0.8, 1.25), "eosin": rng.uniform(0.55, 1.05),
               "hue": rng.normal(0.0, 0.05), "blur": rng.uniform(0.0, 0.6)}
    params = region_params(profile, rng)
    w, h = size
    tissue = build_tissue(params, (10.0, 10.0 * h / w), rng)
    return render(tissue, "200X", size, stain_vectors(profile), rng)


def _check(images_per_class: int, size: Sequence[int]) -> None:
    if images_per_class < 1:
        raise ConfigError(f"images per class must be >= 1, got {images_per_class}")
    check_image_size(tuple(size))


def _settings(dataset: str, images_per_class: int, image_size: Sequence[int],
              seed: int) -> dict:
    """Checked arguments of a writer, as recorded in (and compared with) its marker file."""
    _check(images_per_class, image_size)
    return {"generator": "mpcs.synth_transfer/1", "dataset": dataset,
            "images_per_class": images_per_class, "image_size": list(image_size), "seed": seed}


def _marker_matches(root: Path, wanted: dict) -> bool:
    marker = root / _MARKER
    if not marker.exists():
        return False
    try:
        if json.loads(marker.read_text()) == wanted:
            log.info("synthetic data already present at %s", root)
            return True
    except (OSError, ValueError):
        pass
    raise ConfigError(f"{root} holds a different synthetic data set ({marker}); choose "
                      "another --out or delete it")


def _write(jobs: list[tuple[Path, str, int]], grades: Mapping[str, tuple[float, float]],
           size: tuple[int, int], seed: int, progress: bool) -> None:
    for path, label, index in tqdm(jobs, desc="synth", unit="image", disable=not progress,
                                   leave=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_image(grades[label], size, seed, index)).save(path)


def write_bach(out: str | Path, images_per_class: int = 4,
               image_size: tuple[int, int] = BACH_IMAGE_SIZE, seed: int = 0,
               progress: bool = True) -> Path:
    """Write a synthetic BACH set; returns ``OUT/ICIAR2018_BACH_Challenge``."""
    wanted = _settings("bach", images_per_class, image_size, seed)
    root = Path(out) / "ICIAR2018_BACH_Challenge"
    if _marker_matches(root, wanted):
        return root
    photos = root / "Photos"
    jobs, truth = [], []
    for c, label in enumerate(BACH_CLASSES):
        for i in range(images_per_class):
            name = f"{BACH_PREFIX[label]}{i + 1:03d}.tif"
            jobs.append((photos / label / name, label, c * 100_000 + i))
            truth.append(f"{name},{label}")
    _write(jobs, BACH_GRADES, tuple(image_size), seed, progress)
    (photos / GROUND_TRUTH).write_text("\n".join(truth) + "\n")
    (root / _MARKER).write_text(json.dumps(wanted, indent=1))
    return root


def write_bcc(out: str | Path, images_per_class: int = 6,
              image_size: tuple[int, int] = BCC_IMAGE_SIZE, seed: int = 0,
              progress: bool = True) -> Path:
    """Write a synthetic BCC set; returns ``OUT/bcc``. Images come in tissue-microarray
    groups of up to three per class, named as the UCSB files."""
    wanted = _settings("bcc", images_per_class, image_size, seed)
    root = Path(out) / "bcc"
    if _marker_matches(root, wanted):
        return root
    jobs = []
    for c, label in enumerate(BCC_CLASSES):
        for i in range(images_per_class):
            tma = 10 + 2 * (i // 3)
            name = f"ytma{tma}_0{tma % 9 + 1}0704_{label}{i % 3 + 1}_ccd.tif"
            jobs.append((root / name, label, c * 100_000 + i))
    _write(jobs, BCC_GRADES, tuple(image_size), seed, progress)
    (root / _MARKER).write_text(json.dumps(wanted, indent=1))
    return root
