"""The synthetic tissue model behind every generated image: a region of glands, tumour nests
and stroma drawn from a grade (0 = clearly benign, 1 = clearly malignant), rendered at any
magnification with hematoxylin and eosin optical densities and a per-image acquisition
(stain uptake, exposure, white balance, blur, noise). Used by the BreakHis, BACH and BCC
writers in this package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The field of view shrinks with magnification: 400X sees 1 unit, 40X 10 units.
MAGNIFICATION_FACTORS = {"40X": 40, "100X": 100, "200X": 200, "400X": 400}
# Optical densities (R, G, B) of hematoxylin and eosin (Ruifrok & Johnston).
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])
# Spread (log scale) of per-image acquisition: stain uptake, exposure, white balance.
ACQUISITION_SPREAD = 0.15


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


def region_params(profile: dict[str, float], rng: np.random.Generator) -> RegionParams:
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


def stain_vectors(profile: dict[str, float]) -> dict[str, np.ndarray]:
    hue = profile["hue"]
    h = _HEMATOXYLIN + np.array([hue, -hue * 0.5, -hue])
    e = _EOSIN + np.array([-hue * 0.5, hue, hue * 0.3])
    return {"h": np.clip(h, 0.02, None), "e": np.clip(e, 0.02, None),
            "hema_scale": profile["hema"], "blur": profile["blur"]}


