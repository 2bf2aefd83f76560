"""Procedural H&E-like BreakHis stand-in, written in the official archive layout.

Every *sample* is one synthetic tissue region rendered at 40X, 100X, 200X and 400X as nested
zooms around a common centre (the 400X field is the central tenth of the 40X field), so the
magnification prior holds in this data by construction. Tissue is described in continuous
coordinates (the 400X field is 1 unit wide) and rendered at each magnification's pixel size:

* architecture (visible at 40X): benign regions hold glands (a ring of epithelial nuclei
  around a white lumen) in fibrous stroma; malignant regions hold solid, crowded nests and
  sheets with few lumens;
* cytology (visible at 200X-400X): malignant nuclei are larger, more variable in size,
  irregular in outline, darker and with coarse chromatin.

Each patient has a *grade* that sets these properties; the classes overlap in every single
cue, patients differ in stain (hematoxylin/eosin colour and strength), cellularity and focus,
and samples vary around their patient, so the task is not trivial. Output is deterministic
for a given seed: patient ``p``'s sample ``s`` depends only on ``(seed, p, s)``.

Example:
    >>> from mpcs.data.synth import SynthConfig, write_breakhis
    >>> root = write_breakhis("/tmp/synth", SynthConfig(patients=4, samples_per_patient=2))
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mpcs.core.errors import ConfigError
from mpcs.data.synth.tissue import (
    MAGNIFICATION_FACTORS,
    build_tissue,
    region_params,
    render,
    stain_vectors,
)

log = logging.getLogger(__name__)

BENIGN_SUBTYPES = (("A", "adenosis"), ("F", "fibroadenoma"), ("PT", "phyllodes_tumor"),
                   ("TA", "tubular_adenoma"))
MALIGNANT_SUBTYPES = (("DC", "ductal_carcinoma"), ("LC", "lobular_carcinoma"),
                      ("MC", "mucinous_carcinoma"), ("PC", "papillary_carcinoma"))
SYNTH_YEAR = "22"
_MARKER = "mpcs-synth.json"
#: Sides of a synthetic image, in pixels (the renderer holds several float copies of an
#: image: 100000x100000 would need terabytes).
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 16, 8192


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``image_size`` is (width, height) in pixels for every magnification."""

    patients: int = 40
    samples_per_patient: int = 8
    # 0: every patient has exactly samples_per_patient samples; s > 0: patient p has a count
    # drawn uniformly from [(1 - s) K, (1 + s) K], as real patients differ in image counts
    # (which is what makes patient-level accuracy differ from image-level accuracy).
    sample_spread: float = 0.0
    image_size: tuple[int, int] = (175, 115)
    seed: int = 0

    def validate(self) -> None:
        if self.patients < 2:
            raise ConfigError(f"synth: patients must be >= 2 (one per class), got {self.patients}")
        if self.samples_per_patient < 1:
            raise ConfigError(
                f"synth: samples_per_patient must be >= 1, got {self.samples_per_patient}")
        if not 0 <= self.sample_spread < 1:
            raise ConfigError(f"synth: sample_spread must be in [0, 1), got {self.sample_spread}")
        check_image_size(self.image_size, "synth: image_size")


@dataclass(frozen=True)
class PatientSpec:
    index: int
    label: str
    subtype: str
    subtype_folder: str
    slide: str

    @property
    def patient_id(self) -> str:
        return f"{SYNTH_YEAR}-{self.slide}"

    @property
    def class_letter(self) -> str:
        return "B" if self.label == "benign" else "M"


def check_image_size(size: tuple[int, ...] | list[int], what: str = "image size") -> None:
    """Refuse a size that is not two sides of ``MIN_IMAGE_SIDE..MAX_IMAGE_SIDE`` pixels."""
    if len(size) != 2 or not all(MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in size):
        shown = "x".join(str(v) for v in size)
        raise ConfigError(f"{what} must be WIDTHxHEIGHT of at least {MIN_IMAGE_SIDE} and at "
                          f"most {MAX_IMAGE_SIDE} pixels per side, got {shown}")


def parse_image_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` (e.g. ``"175x115"``) into ``(width, height)``, each side in
    ``MIN_IMAGE_SIDE..MAX_IMAGE_SIDE``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(
            f"image size must look like WIDTHxHEIGHT (e.g. 175x115), got {text!r}") from None
    check_image_size((w, h))
    return w, h


def patient_specs(cfg: SynthConfig) -> list[PatientSpec]:
    """Alternate benign/malignant patients; subtypes cycle within each class."""
    specs = []
    for i in range(cfg.patients):
        benign = i % 2 == 0
        table = BENIGN_SUBTYPES if benign else MALIGNANT_SUBTYPES
        code, folder = table[(i // 2) % len(table)]
        specs.append(PatientSpec(i, "benign" if benign else "malignant", code, folder,
                                 f"{10001 + i}SY"))
    return specs


def sample_count(cfg: SynthConfig, p: PatientSpec) -> int:
    """Number of samples of patient ``p`` (see ``SynthConfig.sample_spread``)."""
    k = cfg.samples_per_patient
    if cfg.sample_spread == 0:
        return k
    rng = np.random.default_rng([cfg.seed, p.index, 0])
    low = max(1, round(k * (1 - cfg.sample_spread)))
    return int(rng.integers(low, round(k * (1 + cfg.sample_spread)) + 1))


def image_relpath(p: PatientSpec, magnification: str, sequence: int) -> Path:
    """Path of one image below the archive's ``BreaKHis_v1`` folder, exactly as the archive."""
    patient_folder = f"SOB_{p.class_letter}_{p.subtype}_{p.patient_id}"
    mag_number = magnification[:-1]
    name = f"SOB_{p.class_letter}_{p.subtype}-{p.patient_id}-{mag_number}-{sequence:03d}.png"
    return (Path("histology_slides", "breast", p.label, "SOB", p.subtype_folder,
                 patient_folder, magnification, name))


def _patient_profile(p: PatientSpec, rng: np.random.Generator) -> dict[str, float]:
    if p.label == "benign":
        grade = rng.beta(2.0, 4.0) * 0.75          # mostly < 0.4, tail up to 0.75
    else:
        grade = 0.25 + rng.beta(4.0, 2.0) * 0.75   # mostly > 0.6, tail down to 0.25
    return {
        "grade": grade,
        "cellularity": rng.uniform(0.7, 1.3),
        "hema": rng.uniform(0.75, 1.3),
        "eosin": rng.uniform(0.5, 1.1),
        "hue": rng.normal(0.0, 0.06),
        "blur": rng.uniform(0.0, 0.7),
    }


def render_sample(cfg: SynthConfig, p: PatientSpec, sample_index: int) -> dict[str, np.ndarray]:
    """All four magnifications of sample ``sample_index`` of patient ``p``."""
    profile = _patient_profile(p, np.random.default_rng([cfg.seed, p.index]))
    rng = np.random.default_rng([cfg.seed, p.index, sample_index + 1])
    params = region_params(profile, rng)
    w, h = cfg.image_size
    tissue = build_tissue(params, (10.0, 10.0 * h / w), rng)
    stain = stain_vectors(profile)
    return {mag: render(tissue, mag, cfg.image_size, stain, rng) for mag in MAGNIFICATION_FACTORS}


def _write_sample(cfg: SynthConfig, p: PatientSpec, sample_index: int, root: Path) -> int:
    images = render_sample(cfg, p, sample_index)
    for mag, img in images.items():
        path = root / image_relpath(p, mag, sample_index + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, compress_level=1)
    return len(images)


def write_breakhis(out: str | Path, cfg: SynthConfig, progress: bool = True,
                   workers: int | None = None) -> Path:
    """Write the synthetic set under ``out/BreaKHis_v1`` and return that folder.

    If ``out`` already holds a complete set made with the same configuration, nothing is
    regenerated (a marker file records the configuration, written last).
    """
    cfg.validate()
    root = Path(out) / "BreaKHis_v1"
    marker = root / _MARKER
    wanted = {"generator": "mpcs.synth/2", **asdict(cfg), "image_size": list(cfg.image_size)}
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                log.info("synthetic data already present at %s", root)
                return root
        except (OSError, json.JSONDecodeError):
            pass
        raise ConfigError(f"{root} holds a different synthetic data set ({marker}); "
                          "choose another --out or delete it")
    from tqdm import tqdm

    jobs = [(p, s) for p in patient_specs(cfg) for s in range(sample_count(cfg, p))]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_write_sample, cfg, p, s, root) for p, s in jobs]
        for f in tqdm(as_completed(futures), total=len(futures), desc="synth", unit="sample",
                      disable=not progress, leave=False):
            f.result()
    marker.write_text(json.dumps(wanted, indent=1))
    return root
