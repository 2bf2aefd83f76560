"""The uniform stochastic transformation T_U, applied to whole batches of pairs.

MPCS samples ONE set of augmentation parameters per pair and applies it to both views, so the
only difference between the views is the magnification (the authors' code meant to do this
but drew the two views' parameters independently; method notes, defect 5). Parameters are
drawn per pair, so a batch of N pairs uses N parameter sets; each set is used twice.

The operations follow torchvision's definitions (``torchvision.transforms.v2.functional``:
``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, flips,
``rotate``, ``affine``) but take a different parameter for each image of the batch, which
torchvision's batch transforms do not (they share one draw across the whole batch). The
tests check each operation against torchvision on single images.

Order: colour jitter (brightness, contrast, saturation, hue; a fixed order where torchvision's
ColorJitter shuffles it per call), horizontal/vertical flip,
90-degree rotation, small rotation plus translation (one bilinear warp, reflected borders),
resize to the input size, normalisation.

Example:
    >>> aug = UniformPairAugment(AugmentConfig(), input_size=64)
    >>> v1 = v2 = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8)
    >>> a, b = aug(v1, v2, torch.Generator().manual_seed(0))
    >>> bool(torch.equal(a, b))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mpcs.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the uniform transformation (0 switches an operation off)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    rotation_degrees: float = 15.0
    translate: float = 0.05

    def validate(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        for name in ("hflip", "vflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability, got {getattr(self, name)}")
        if not 0 <= self.rotation_degrees <= 180:
            raise ConfigError(f"augment.rotation_degrees must be in [0, 180], "
                              f"got {self.rotation_degrees}")
        if not 0 <= self.translate < 0.5:
            raise ConfigError(f"augment.translate must be in [0, 0.5), got {self.translate}")


@dataclass
class PairParams:
    """One parameter set per pair: every field has a leading batch dimension [N]."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    hflip: Tensor
    vflip: Tensor
    rot90: Tensor
    angle: Tensor
    shift: Tensor  # [N, 2] as a fraction of width and height


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def sample_params(cfg: AugmentConfig, n: int, g: torch.Generator) -> PairParams:
    """Draw ``n`` parameter sets on the CPU from generator ``g``."""
    return PairParams(
        brightness=_uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g),
        contrast=_uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g),
        saturation=_uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g),
        hue=_uniform(n, -cfg.hue, cfg.hue, g),
        hflip=torch.rand(n, generator=g) < cfg.hflip,
        vflip=torch.rand(n, generator=g) < cfg.vflip,
        rot90=(torch.randint(0, 4, (n,), generator=g) if cfg.rot90
               else torch.zeros(n, dtype=torch.long)),
        angle=_uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees, g),
        shift=_uniform(2 * n, -cfg.translate, cfg.translate, g).view(n, 2),
    )


def _gray(x: Tensor) -> Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _per_image(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_image(factor)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_image(factor)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    f = _per_image(factor)
    return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    """Branch-free HSV -> RGB: channel n in (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 h) mod 6 (the same values as torchvision's masked version, a few
    element-wise operations instead of a 6-way stack)."""
    h, s, v = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def flip_rotate(x: Tensor, p: PairParams) -> Tensor:
    """Per-image horizontal/vertical flips and 90-degree rotations (square images only)."""
    x = torch.where(_per_image(p.hflip.to(x.device)), x.flip(-1), x)
    x = torch.where(_per_image(p.vflip.to(x.device)), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        k = p.rot90.to(x.device)
        for turns in (1, 2, 3):
            x = torch.where(_per_image(k == turns), torch.rot90(x, turns, dims=(-2, -1)), x)
    return x


def rotate_translate(x: Tensor, angle_deg: Tensor, shift: Tensor) -> Tensor:
    """Rotate about the centre by ``angle_deg`` (counter-clockwise) and shift by ``shift``
    (fractions of width/height) in one bilinear warp with reflected borders."""
    if not bool((angle_deg != 0).any() or (shift != 0).any()):
        return x
    a = torch.deg2rad(angle_deg.to(x.device, torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    # affine_grid maps output to input coordinates: inverse rotation, negative shift.
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, :, 2] = -2 * shift.to(x.device, torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def colour_jitter(x: Tensor, p: PairParams) -> Tensor:
    dev = x.device
    x = adjust_brightness(x, p.brightness.to(dev))
    x = adjust_contrast(x, p.contrast.to(dev))
    x = adjust_saturation(x, p.saturation.to(dev))
    if bool((p.hue != 0).any()):
        x = adjust_hue(x, p.hue.to(dev))
    return x


def resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def to_float(x: Tensor) -> Tensor:
    """uint8 [N,3,H,W] -> float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class UniformPairAugment:
    """Apply one sampled parameter set per pair to both views, for a batch of pairs.

    Args:
        cfg: augmentation strengths.
        input_size: side of the square network input; views are resized to it last.
        mean, std: normalisation the encoder expects.

    Call with ``view1, view2`` of shape [N, 3, H, W] (uint8 or float in [0, 1], any device)
    and a CPU ``torch.Generator``; returns two float tensors [N, 3, input_size, input_size].
    """

    def __init__(self, cfg: AugmentConfig, input_size: int,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        cfg.validate()
        if input_size < 8:
            raise ConfigError(f"input_size must be >= 8, got {input_size}")
        self.cfg, self.input_size, self.mean, self.std = cfg, input_size, mean, std

    def apply(self, x: Tensor, p: PairParams) -> Tensor:
        x = colour_jitter(to_float(x), p)
        x = flip_rotate(x, p)
        x = rotate_translate(x, p.angle, p.shift)
        x = resize(x, self.input_size)
        return normalize(x, self.mean, self.std)

    def __call__(self, view1: Tensor, view2: Tensor,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if view1.shape != view2.shape:
            raise ValueError(f"views must have the same shape, got {tuple(view1.shape)} "
                             f"and {tuple(view2.shape)}")
        n = view1.shape[0]
        p = sample_params(self.cfg, n, generator)
        both = self.apply(torch.cat([view1, view2]), _repeat(p))
        return both[:n], both[n:]


def _repeat(p: PairParams) -> PairParams:
    """The same parameters for the second half of a concatenated [view1; view2] batch."""
    return PairParams(**{k: torch.cat([v, v]) for k, v in vars(p).items()})


def eval_transform(x: Tensor, input_size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """Deterministic pre-processing for feature extraction: resize and normalise."""
    return normalize(resize(to_float(x), input_size), mean, std)

