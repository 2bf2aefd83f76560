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
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mpcs.core.errors import ConfigError

log = logging.getLogger(__name__)

MAGNIFICATION_FACTORS = {"40X": 40, "100X": 100, "200X": 200, "400X": 400}
BENIGN_SUBTYPES = (("A", "adenosis"), ("F", "fibroadenoma"), ("PT", "phyllodes_tumor"),
                   ("TA", "tubular_adenoma"))
MALIGNANT_SUBTYPES = (("DC", "ductal_carcinoma"), ("LC", "lobular_carcinoma"),
                      ("MC", "mucinous_carcinoma"), ("PC", "papillary_carcinoma"))
SYNTH_YEAR = "22"
# Optical densities (R, G, B) of hematoxylin and eosin (Ruifrok & Johnston).
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])
_MARKER = "mpcs-synth.json"
# Spread (log scale) of per-image acquisition: stain uptake, exposure, white balance.
ACQUISITION_SPREAD = 0.15
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


# ----------------------------------------------------------------------------- tissue model


@dataclass
class RegionParams:
    """Properties of one tissue region, drawn from its patient's grade."""

    grade: float            # 0 = clearly benign ... 1 = clearly malignant
    nuclear_radius: float   # units (400X field is 1 unit wide)
    radius_cv: float        # pleomorphism
    irregularity: float     # amplitude of outline harmonics
    darkness: float         # hematoxylin uptake of nuclei
    coarseness: float       # chromatin clumping
    gland_count: int
    nest_count: int
    stroma_nuclei: int
    eosin: float
    hema_scale: float
    blur: float


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


def _region_params(profile: dict[str, float], rng: np.random.Generator) -> RegionParams:
    g = float(np.clip(profile["grade"] + rng.normal(0.0, 0.12), 0.0, 1.0))
    cell = profile["cellularity"] * rng.uniform(0.85, 1.15)
    return RegionParams(
        grade=g,
        nuclear_radius=0.030 + 0.022 * g + rng.normal(0, 0.003),
        radius_cv=0.08 + 0.22 * g,
        irregularity=0.03 + 0.20 * g,
        darkness=0.55 + 0.35 * g + rng.normal(0, 0.05),
        coarseness=0.1 + 0.8 * g,
        gland_count=int(round((1.0 - g) * 24 * cell * rng.uniform(0.7, 1.3))),
        nest_count=int(round((0.3 + 2.2 * g) * 6 * cell * rng.uniform(0.6, 1.4))),
        stroma_nuclei=int(300 * cell * rng.uniform(0.7, 1.3)),
        eosin=profile["eosin"] * rng.uniform(0.9, 1.1),
        hema_scale=profile["hema"],
        blur=profile["blur"],
    )


@dataclass
class Tissue:
    """Nuclei, lumens and a stroma texture in continuous coordinates, centred on (0, 0)."""

    centres: np.ndarray      # [n, 2]
    radii: np.ndarray        # [n]
    elongation: np.ndarray   # [n] axis ratio >= 1
    angle: np.ndarray        # [n]
    harmonics: np.ndarray    # [n, K, 2] amplitude, phase for k = 2..K+1
    darkness: np.ndarray     # [n]
    lumens: np.ndarray       # [m, 3] x, y, radius
    waves: np.ndarray        # [w, 4] fx, fy, phase, amplitude (stroma fibres)
    chromatin: np.ndarray    # [c, 4] fx, fy, phase, amplitude (nuclear texture)
    coarseness: float
    params: RegionParams


def _ring_nuclei(centre: np.ndarray, radius: float, spacing: float,
                 rng: np.random.Generator) -> np.ndarray:
    n = max(6, int(2 * math.pi * radius / spacing))
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi)
    r = radius * (1 + rng.normal(0, 0.04, n))
    return centre + np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def build_tissue(params: RegionParams, extent: tuple[float, float],
                 rng: np.random.Generator) -> Tissue:
    """Lay out one region large enough to cover the 40X field ``extent`` (width, height)."""
    half = np.array(extent) / 2 * 1.05
    r0 = params.nuclear_radius
    points, kinds, lumens = [], [], []
    # The field is centred on lesional tissue, as a pathologist would frame it.
    centre_is_gland = rng.uniform() > params.grade
    for i in range(params.gland_count + int(centre_is_gland)):
        c = rng.uniform(-0.3, 0.3, 2) if i == params.gland_count else rng.uniform(-half, half)
        gr = rng.uniform(0.25, 0.6)
        lumen = gr * rng.uniform(0.45, 0.7) * (1 - 0.8 * params.grade)
        lumens.append((c[0], c[1], lumen))
        layers = 1 + int(params.grade * 3 * rng.uniform(0.5, 1.2))
        for layer in range(layers):
            ring = lumen + r0 * (1.6 + 2.2 * layer)
            points.append(_ring_nuclei(c, ring, 2.3 * r0, rng))
            kinds.append(np.zeros(len(points[-1])))
    for i in range(params.nest_count + int(not centre_is_gland)):
        c = rng.uniform(-0.3, 0.3, 2) if i == params.nest_count else rng.uniform(-half, half)
        spread = rng.uniform(0.25, 0.8)
        count = int(spread ** 2 * 260 * rng.uniform(0.7, 1.3))
        pts = c + rng.normal(0, spread / 1.6, (count, 2)) * rng.uniform(0.6, 1.4, 2)
        points.append(pts)
        kinds.append(np.zeros(count))
    stroma = rng.uniform(-half, half, (params.stroma_nuclei, 2))
    points.append(stroma)
    kinds.append(np.ones(len(stroma)))
    centres = np.concatenate(points)
    is_stroma = np.concatenate(kinds).astype(bool)
    n = len(centres)

    radii = r0 * np.exp(rng.normal(0, params.radius_cv, n))
    radii[is_stroma] = r0 * 0.6 * np.exp(rng.normal(0, 0.1, int(is_stroma.sum())))
    elongation = 1 + np.abs(rng.normal(0.15, 0.1 + 0.2 * params.grade, n))
    elongation[is_stroma] = rng.uniform(2.5, 4.0, int(is_stroma.sum()))
    angle = rng.uniform(0, math.pi, n)
    k = 4
    amp = np.abs(rng.normal(0, params.irregularity, (n, k))) / np.arange(1, k + 1)
    amp[is_stroma] *= 0.3
    harmonics = np.stack([amp, rng.uniform(0, 2 * math.pi, (n, k))], axis=2)
    darkness = np.clip(params.darkness * np.exp(rng.normal(0, 0.1 + 0.15 * params.grade, n)),
                       0.2, 1.6)

    # Stroma texture without a dominant direction: an orientation shared by every zoom of a
    # region would let pre-training match views by it instead of by the tissue's content.
    w = 40
    theta = rng.uniform(0, math.pi, w)
    freq = np.exp(rng.uniform(np.log(0.4), np.log(25.0), w))
    waves = np.stack([freq * np.cos(theta), freq * np.sin(theta),
                      rng.uniform(0, 2 * math.pi, w), freq ** -0.6], axis=1)
    c = 16
    cth = rng.uniform(0, math.pi, c)
    cfreq = rng.uniform(30, 90, c) / (0.3 + params.coarseness)
    chromatin = np.stack([cfreq * np.cos(cth), cfreq * np.sin(cth),
                          rng.uniform(0, 2 * math.pi, c), np.ones(c)], axis=1)
    return Tissue(centres, radii, elongation, angle, harmonics, darkness,
                  np.array(lumens, dtype=float).reshape(-1, 3), waves, chromatin,
                  params.coarseness, params)


# ----------------------------------------------------------------------------- rendering


def _wave_field(waves: np.ndarray, xs: np.ndarray, ys: np.ndarray, pixel: float) -> np.ndarray:
    """Band-limited sum of plane waves: components finer than a pixel fade out, not alias."""
    out = np.zeros((len(ys), len(xs)))
    for fx, fy, phase, amp in waves:
        f = math.hypot(fx, fy)
        a = amp * math.exp(-((f * pixel * 2.0) ** 2))
        if a < 1e-4:
            continue
        out += a * np.cos(2 * math.pi * fy * ys)[:, None] * np.cos(
            2 * math.pi * fx * xs + phase)[None, :]
        out -= a * np.sin(2 * math.pi * fy * ys)[:, None] * np.sin(
            2 * math.pi * fx * xs + phase)[None, :]
    return out


def _splat_nuclei(t: Tissue, sel: np.ndarray, origin: np.ndarray, pixel: float,
                  shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and hematoxylin of the selected nuclei, drawn with anti-aliased outlines."""
    h, w = shape
    cover = np.zeros(h * w)
    stain = np.zeros(h * w)
    if not sel.any():
        return cover.reshape(h, w), stain.reshape(h, w)
    centres = (t.centres[sel] - origin) / pixel          # pixel coordinates
    radii = t.radii[sel] / pixel
    elong, ang, harm, dark = t.elongation[sel], t.angle[sel], t.harmonics[sel], t.darkness[sel]
    reach = radii * np.sqrt(elong) * (1 + harm[:, :, 0].sum(1)) + 1.5
    # Group nuclei by box size to keep each batch a dense array.
    box = np.clip(np.ceil(reach).astype(int), 1, None)
    for b in np.unique(box):
        idx = np.nonzero(box == b)[0]
        off = np.arange(-b, b + 1)
        cx = np.floor(centres[idx, 0]).astype(int)
        cy = np.floor(centres[idx, 1]).astype(int)
        gx = cx[:, None, None] + off[None, None, :]
        gy = cy[:, None, None] + off[None, :, None]
        dx = gx + 0.5 - centres[idx, 0][:, None, None]
        dy = gy + 0.5 - centres[idx, 1][:, None, None]
        ca, sa = np.cos(ang[idx])[:, None, None], np.sin(ang[idx])[:, None, None]
        u = dx * ca + dy * sa
        v = -dx * sa + dy * ca
        e = np.sqrt(elong[idx])[:, None, None]
        u, v = u / e, v * e
        d = np.hypot(u, v)
        theta = np.arctan2(v, u)
        rr = np.ones_like(d)
        for k in range(harm.shape[1]):
            rr += harm[idx, k, 0][:, None, None] * np.cos(
                (k + 2) * theta + harm[idx, k, 1][:, None, None])
        edge = radii[idx][:, None, None] * rr
        # Area-preserving coverage for nuclei smaller than a pixel.
        small = np.clip(radii[idx] * 1.2, 0.0, 1.0)[:, None, None]
        alpha = np.clip(edge - d + 0.5, 0.0, 1.0) * np.where(small < 1.0, small, 1.0)
        gxs = origin[0] + (gx + 0.5) * pixel   # tissue coordinates of each pixel
        gys = origin[1] + (gy + 0.5) * pixel
        texture = np.zeros_like(d)
        for fx, fy, phase, _ in t.chromatin:
            texture += np.cos(2 * math.pi * (fx * gxs + fy * gys) + phase)
        blur_fade = math.exp(-((70.0 * pixel) ** 2))
        texture = 1 + t.coarseness * 0.12 * texture * blur_fade
        value = alpha * dark[idx][:, None, None] * texture
        inside = (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h)
        flat = (gy * w + gx)[inside]
        np.maximum.at(cover, flat, alpha[inside])
        np.maximum.at(stain, flat, value[inside])
    return cover.reshape(h, w), stain.reshape(h, w)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    radius = int(math.ceil(2.5 * sigma))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    tmp = sum(k[i] * pad[:, i:i + img.shape[1]] for i in range(len(k)))
    return sum(k[i] * tmp[i:i + img.shape[0]] for i in range(len(k)))


def render(t: Tissue, magnification: str, size: tuple[int, int], stain: dict[str, np.ndarray],
           rng: np.random.Generator) -> np.ndarray:
    """Render the field of view at one magnification as an RGB uint8 array [H, W, 3]."""
    w, h = size
    field_w = 400.0 / MAGNIFICATION_FACTORS[magnification]
    pixel = field_w / w
    origin = np.array([-field_w / 2, -pixel * h / 2])
    xs = origin[0] + (np.arange(w) + 0.5) * pixel
    ys = origin[1] + (np.arange(h) + 0.5) * pixel

    margin = t.radii * 3
    sel = ((t.centres[:, 0] > origin[0] - margin) & (t.centres[:, 0] < -origin[0] + margin)
           & (t.centres[:, 1] > origin[1] - margin) & (t.centres[:, 1] < -origin[1] + margin))
    cover, hema = _splat_nuclei(t, sel, origin, pixel, (h, w))

    fibres = _wave_field(t.waves, xs, ys, pixel)
    eosin = t.params.eosin * (0.6 + 0.2 * np.tanh(0.8 * fibres))
    # Epithelium: cytoplasm is denser around nuclei clusters (coverage blurred widely).
    cyto = _blur(cover[:, :, None], max(0.5, 2.0 * t.params.nuclear_radius / pixel))[:, :, 0]
    eosin = eosin + 0.5 * t.params.eosin * np.clip(cyto * 3, 0, 1)
    for lx, ly, lr in t.lumens:
        d = np.hypot(xs[None, :] - lx, ys[:, None] - ly)
        hole = np.clip((lr - d) / pixel + 0.5, 0, 1)
        eosin *= 1 - 0.9 * hole
        hema *= 1 - 0.9 * hole
    # Each magnification is a separate capture: its own exposure, stain uptake in the imaged
    # field, white balance and focus. Views of one sample therefore differ in more than scale.
    h_gain, e_gain = np.exp(rng.normal(0.0, ACQUISITION_SPREAD, 2))
    hema_od = h_gain * stain["hema_scale"] * (0.08 + 1.4 * hema)
    od = (hema_od[:, :, None] * stain["h"]
          + e_gain * np.clip(eosin, 0, None)[:, :, None] * stain["e"])
    exposure = np.exp(rng.normal(0.0, ACQUISITION_SPREAD * 0.8)
                      + rng.normal(0.0, ACQUISITION_SPREAD * 0.25, 3))
    rgb = 255.0 * np.exp(-od) * exposure
    rgb = _blur(rgb, stain["blur"] + rng.uniform(0.0, 0.6))
    rgb += rng.normal(0, 3.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _stain_vectors(profile: dict[str, float]) -> dict[str, np.ndarray]:
    hue = profile["hue"]
    h = _HEMATOXYLIN + np.array([hue, -hue * 0.5, -hue])
    e = _EOSIN + np.array([-hue * 0.5, hue, hue * 0.3])
    return {"h": np.clip(h, 0.02, None), "e": np.clip(e, 0.02, None),
            "hema_scale": profile["hema"], "blur": profile["blur"]}


def render_sample(cfg: SynthConfig, p: PatientSpec, sample_index: int) -> dict[str, np.ndarray]:
    """All four magnifications of sample ``sample_index`` of patient ``p``."""
    profile = _patient_profile(p, np.random.default_rng([cfg.seed, p.index]))
    rng = np.random.default_rng([cfg.seed, p.index, sample_index + 1])
    params = _region_params(profile, rng)
    w, h = cfg.image_size
    tissue = build_tissue(params, (10.0, 10.0 * h / w), rng)
    stain = _stain_vectors(profile)
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
