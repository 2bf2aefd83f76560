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

Two options let the views differ in colour while the geometry stays shared (for real
images, where both views of a pair come from one slide with one stain, identical colours
let colour statistics alone identify a pair):

* ``hed``: H&E stain jitter in HED space (Tellez et al., IEEE TMI 2018; Med. Image Anal.
  2019): the optical density of each of haematoxylin, eosin and DAB is scaled by
  ``U(1 - hed, 1 + hed)`` and shifted by ``U(-hed, hed)``;
* ``per_view_colour``: colour jitter and stain jitter drawn for each view on its own; the
  flips, rotations and translation are still one draw per pair.

Order: stain jitter, colour jitter (brightness, contrast, saturation, hue; a fixed order
where torchvision's ColorJitter shuffles it per call), horizontal/vertical flip,
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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mpcs.errors import ConfigError

#: Pixels per channel of one chunk of a batch augmented on the CPU (see
#: :meth:`UniformPairAugment.apply`): one 224 x 224 view, or 28 views of 48 x 48.
CPU_CHUNK_PIXELS = 224 * 224
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
    hed: float = 0.0
    per_view_colour: bool = False

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
        if not 0 <= self.hed < 1:
            raise ConfigError(f"augment.hed must be in [0, 1), got {self.hed}")


@dataclass
class PairParams:
    """One parameter set per pair: every field has a leading batch dimension [N].

    ``hed_scale``/``hed_shift`` ([N, 3]) are ``None`` without stain jitter; ``second`` holds
    the colour and stain draws of view 2 when they are drawn per view (its geometric fields
    are not used: the geometry is this set's)."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    hflip: Tensor
    vflip: Tensor
    rot90: Tensor
    angle: Tensor
    shift: Tensor  # [N, 2] as a fraction of width and height
    hed_scale: Tensor | None = None
    hed_shift: Tensor | None = None
    second: PairParams | None = None

    def __len__(self) -> int:
        return int(self.brightness.shape[0])

    def take(self, start: int, stop: int) -> PairParams:
        """The parameter sets of pairs ``start:stop`` (a rank's shard of a global draw)."""
        return PairParams(**{k: None if v is None else (v.take(start, stop) if k == "second"
                                                         else v[start:stop])
                             for k, v in vars(self).items()})


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def sample_params(cfg: AugmentConfig, n: int, g: torch.Generator) -> PairParams:
    """Draw ``n`` parameter sets on the CPU from generator ``g``.

    The draws of the stain jitter and of view 2's colours come after the others, so that a
    configuration without them draws exactly what it drew before they existed."""
    p = PairParams(
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
    if cfg.hed:
        p.hed_scale, p.hed_shift = _hed_draw(cfg.hed, n, g)
    if cfg.per_view_colour:
        p.second = PairParams(**{**vars(p), "second": None,
                                 **_colour_draw(cfg, n, g)})
    return p


def _hed_draw(strength: float, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    scale = _uniform(3 * n, 1 - strength, 1 + strength, g).view(n, 3)
    return scale, _uniform(3 * n, -strength, strength, g).view(n, 3)


def _colour_draw(cfg: AugmentConfig, n: int, g: torch.Generator) -> dict[str, Tensor | None]:
    """A second draw of the colour and stain fields (view 2's, with ``per_view_colour``)."""
    out: dict[str, Tensor | None] = {
        "brightness": _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g),
        "contrast": _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g),
        "saturation": _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g),
        "hue": _uniform(n, -cfg.hue, cfg.hue, g)}
    if cfg.hed:
        out["hed_scale"], out["hed_shift"] = _hed_draw(cfg.hed, n, g)
    return out


#: Stain vectors of haematoxylin, eosin and DAB (rows; Ruifrok and Johnston 2001, the matrix
#: of scikit-image's ``rgb_from_hed``) and its inverse: optical density -> stain amounts.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
                            dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: Smallest intensity before the logarithm (scikit-image's ``rgb2hed`` uses the same).
_OD_EPS = 1e-6


def hed_jitter(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Tellez et al.'s stain augmentation of float RGB images in [0, 1] ``[N, 3, H, W]``: in
    optical density ``OD = -ln(rgb)`` the stain amounts ``OD @ HED_FROM_RGB`` become
    ``s * scale + shift`` (``[N, 3]`` each, per image and stain), then back to RGB, clamped
    to [0, 1]. Scale 1 and shift 0 return ``x`` (up to float rounding)."""
    n = x.shape[0]
    # One matrix per image: OD' = OD @ (H diag(scale) R) + shift @ R, with H = HED_FROM_RGB and
    # R = RGB_FROM_HED, so the stain amounts are never materialised.
    h, r = HED_FROM_RGB.to(x.device, x.dtype), RGB_FROM_HED.to(x.device, x.dtype)
    mix = h.unsqueeze(0) * scale.to(x.device, x.dtype).unsqueeze(1) @ r  # [N, 3, 3]
    offset = shift.to(x.device, x.dtype) @ r                               # [N, 3]
    od = x.clamp_min(_OD_EPS).log_().neg_()                                 # [N, 3, H, W]
    out = torch.einsum("nchw,ncd->ndhw", od, mix)
    out.add_(offset.view(n, 3, 1, 1)).neg_().exp_()
    return out.clamp_(0, 1)


_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _gray(x: Tensor) -> Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _per_image(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_image(factor)).clamp_(0, 1)


def _gray_mean(x: Tensor) -> Tensor:
    """Mean gray level of each image, [N, 1, 1, 1] (the mean of ``_gray``: it is linear)."""
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device)
    return (x.mean(dim=(2, 3)) @ w).view(-1, 1, 1, 1)


def _gray_into(x: Tensor) -> Tensor:
    """``_gray(x)`` with three fused multiply-adds on one buffer."""
    r, g, b = _GRAY_WEIGHTS
    out = x[:, 0:1] * r
    return out.add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b)


def _contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """In place: blend each image with its mean gray level (``f x + (1 - f) mean``)."""
    return x.lerp_(_gray_mean(x).expand_as(x), 1 - _per_image(factor)).clamp_(0, 1)


def _saturation_(x: Tensor, factor: Tensor) -> Tensor:
    """In place: blend each pixel with its gray value (``f x + (1 - f) gray``)."""
    return x.lerp_(_gray_into(x).expand_as(x), 1 - _per_image(factor)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _saturation_(x.clone(), factor)


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
    """Shift the HSV hue of each image by ``shift[i]`` (fraction of a turn), as
    torchvision's ``adjust_hue``; computed without building the HSV image.

    Only the hue changes, so each pixel keeps its maximum ``v`` and chroma
    ``c = max - min`` (``v s = c``), and channel n in (5, 3, 1) of the result is
    ``v - c clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h') mod 6``; the old hue
    ``6 h`` is ``(g - b) / c``, ``2 + (b - r) / c`` or ``4 + (r - g) / c`` by which channel
    is the maximum (red first on ties, as torchvision).
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    cr = maxc - x.amin(dim=1)
    is_r = maxc == r
    is_g = (maxc == g).logical_and_(~is_r)
    h6 = torch.where(is_r, g - b, torch.where(is_g, torch.add(b - r, cr, alpha=2.0),
                                              torch.add(r - g, cr, alpha=4.0)))
    # A gray pixel (c = 0) has numerator 0 (red is its maximum): hue 0, as torchvision.
    h6.div_(cr.clamp_min(1e-12))
    h6.add_(6.0 * shift.to(x.dtype).view(-1, 1, 1))
    out = torch.empty_like(x)
    k, tri = torch.empty_like(h6), torch.empty_like(h6)  # reused: no fresh pages per channel
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        torch.add(h6, n, out=k).remainder_(6.0)
        torch.mul(k, -1.0, out=tri).add_(4.0)
        torch.minimum(k, tri, out=tri).clamp_(0.0, 1.0)
        torch.addcmul(maxc, cr, tri, value=-1.0, out=out[:, channel])
    return out


def flip_rotate(x: Tensor, p: PairParams) -> Tensor:
    """Per-image horizontal/vertical flips and 90-degree rotations (square images only)."""
    x = torch.where(_per_image(p.hflip.to(x.device)), x.flip(-1), x)
    x = torch.where(_per_image(p.vflip.to(x.device)), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        k = p.rot90.to(x.device)
        for turns in (1, 2, 3):
            x = torch.where(_per_image(k == turns), torch.rot90(x, turns, dims=(-2, -1)), x)
    return x


def _warp_theta(angle_deg: Tensor, shift: Tensor, device: torch.device) -> Tensor:
    """[N, 2, 3] output-to-input maps (``affine_grid``'s convention) of a rotation about the
    centre by ``angle_deg`` (counter-clockwise) followed by a shift of ``shift``."""
    a = torch.deg2rad(angle_deg.to(device, torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(a.shape[0], 2, 3, device=device)
    # affine_grid maps output to input coordinates: inverse rotation, negative shift.
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, :, 2] = -2 * shift.to(device, torch.float32)
    return theta


#: Output-to-input maps of 0, 1, 2, 3 counter-clockwise quarter turns (``torch.rot90``).
_QUARTER_TURNS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]],
                               [[-1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]])


def _flip_rot_matrix(p: PairParams, device: torch.device) -> Tensor:
    """[N, 2, 2] output-to-input maps of ``flip_rotate`` (hflip, then vflip, then k
    counter-clockwise quarter turns) in normalised (x, y) coordinates."""
    n = p.hflip.shape[0]
    flip = torch.zeros(n, 2, 2, device=device)
    flip[:, 0, 0] = 1 - 2 * p.hflip.to(device, torch.float32)
    flip[:, 1, 1] = 1 - 2 * p.vflip.to(device, torch.float32)
    return flip @ _QUARTER_TURNS.to(device)[p.rot90.to(device)]


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, [N, C, H, W], align_corners=False)`` from two broadcast
    multiply-adds per coordinate (affine_grid builds an [N, H, W, 3] base grid and a batched
    matrix product, as slow as the sampling itself on a CPU)."""
    n = theta.shape[0]
    opts = {"dtype": theta.dtype, "device": theta.device}
    xs = ((torch.arange(width, **opts) * 2 + 1) / width - 1).view(1, 1, width)
    ys = ((torch.arange(height, **opts) * 2 + 1) / height - 1).view(1, height, 1)
    grid = torch.empty(n, height, width, 2, **opts)
    for c in (0, 1):
        row = theta[:, c].view(n, 3, 1, 1)
        torch.addcmul(row[:, 1] * ys + row[:, 2], row[:, 0], xs, out=grid[..., c])
    return grid


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = _affine_grid(theta, x.shape[-2], x.shape[-1])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def rotate_translate(x: Tensor, angle_deg: Tensor, shift: Tensor) -> Tensor:
    """Rotate about the centre by ``angle_deg`` (counter-clockwise) and shift by ``shift``
    (fractions of width/height) in one bilinear warp with reflected borders."""
    if not bool((angle_deg != 0).any() or (shift != 0).any()):
        return x
    return _warp(x, _warp_theta(angle_deg, shift, x.device))


def flip_rotate_translate(x: Tensor, p: PairParams) -> Tensor:
    """``rotate_translate(flip_rotate(x, p), p.angle, p.shift)`` in ONE bilinear warp.

    Flips and quarter turns map pixel centres onto pixel centres, so composing their
    matrices with the small rotation's samples the same points (values equal up to float
    rounding) without first copying the batch for every flip and turn. Without a rotation
    or shift (or for non-square images) the exact copies of :func:`flip_rotate` are used.
    """
    theta = _fused_theta(p, x.shape, x.device)
    if theta is None:
        return rotate_translate(flip_rotate(x, p), p.angle, p.shift)
    return _warp(x, theta)


def _fused_theta(p: PairParams, shape: torch.Size, device: torch.device) -> Tensor | None:
    """[N, 2, 3] maps of flips, quarter turns, rotation and shift in one, or ``None`` when
    there is nothing to warp (no rotation or shift) or the images are not square."""
    if not bool((p.angle != 0).any() or (p.shift != 0).any()) or shape[-1] != shape[-2]:
        return None
    theta = _warp_theta(p.angle, p.shift, device)
    return _flip_rot_matrix(p, device) @ theta  # [A_f A_w | A_f b_w]


def colour_jitter(x: Tensor, p: PairParams, inplace: bool = False) -> Tensor:
    """Brightness, contrast, saturation, hue, in this order (each skipped when all its
    factors are neutral). ``x`` is modified only with ``inplace=True``."""
    dev = x.device
    steps = [bool((p.contrast != 1).any()), bool((p.saturation != 1).any()),
             bool((p.hue != 0).any())]
    if bool((p.brightness != 1).any()):
        f = _per_image(p.brightness.to(dev))
        x = x.mul_(f).clamp_(0, 1) if inplace else adjust_brightness(x, p.brightness.to(dev))
    elif not inplace and any(steps[:2]):
        x = x.clone()  # the in-place blends below must not touch the caller's tensor
    if steps[0]:
        x = _contrast_(x, p.contrast.to(dev))
    if steps[1]:
        x = _saturation_(x, p.saturation.to(dev))
    if steps[2]:
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


def _normalize_(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """In place ``(x - mean) / std``."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


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
        """The transformation of a batch ``x`` [B, 3, H, W] with B parameter sets; the
        result is a new tensor (``x`` is left as it is).

        On the CPU the batch is processed in chunks of about :data:`CPU_CHUNK_PIXELS` pixels
        per channel, so that the dozens of element-wise passes of the colour operations
        work on data held in the core's cache instead of streaming the whole batch through
        memory for each pass (measured 1.6x faster at 224 px on one core); on a GPU the
        whole batch is one pass per operation. Per-image factors and warp matrices are
        prepared once for the batch.
        """
        n = x.shape[0]
        plan = _BatchPlan.of(p, x.shape, x.device)
        if x.device.type != "cpu":
            return self._apply(x, plan)
        chunk = max(1, CPU_CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))
        if chunk >= n and torch.get_num_threads() == 1:
            return self._apply(x, plan)
        out = torch.empty(n, 3, self.input_size, self.input_size, dtype=torch.float32)

        def one(start: int) -> None:
            stop = min(n, start + chunk)
            out[start:stop] = self._apply(x[start:stop], plan.take(start, stop))

        def all_chunks() -> None:
            for start in range(0, n, chunk):
                one(start)

        if torch.get_num_threads() == 1:
            all_chunks()
        else:  # in a helper thread that runs torch ops on one intra-op thread
            _chunk_pool().submit(all_chunks).result()
        return out

    def _apply(self, x: Tensor, plan: _BatchPlan) -> Tensor:
        if plan.hed_scale is not None:
            x = hed_jitter(to_float(x), plan.hed_scale, plan.hed_shift)
        if x.dtype == torch.uint8 and plan.brightness is not None:
            # to_float and brightness in one pass: x * (f / 255), clamped to [0, 1]
            y = x.float().mul_(plan.brightness / 255.0).clamp_(0, 1)
        else:
            y = to_float(x)
            if plan.brightness is not None:
                y = (y * plan.brightness).clamp_(0, 1)
        owned = y is not x
        if (plan.contrast is not None or plan.saturation is not None) and not owned:
            y, owned = y.clone(), True
        if plan.contrast is not None:
            y.lerp_(_gray_mean(y).expand_as(y), plan.contrast).clamp_(0, 1)
        if plan.saturation is not None:
            y.lerp_(_gray_into(y).expand_as(y), plan.saturation).clamp_(0, 1)
        if plan.hue is not None:
            y, owned = adjust_hue(y, plan.hue), True
        if plan.theta is not None:
            y, owned = _warp(y, plan.theta), True
        else:
            y = rotate_translate(flip_rotate(y, plan.params), plan.params.angle,
                                 plan.params.shift)
            owned = owned or y is not x
        y = resize(y, self.input_size)
        return _normalize_(y if owned or y is not x else y.clone(), self.mean, self.std)

    def sample(self, n: int, generator: torch.Generator) -> PairParams:
        """``n`` parameter sets (one per pair) drawn from ``generator``, exactly as a call
        on ``n`` pairs draws them."""
        return sample_params(self.cfg, n, generator)

    def __call__(self, view1: Tensor, view2: Tensor, generator: torch.Generator | None = None,
                 *, params: PairParams | None = None) -> tuple[Tensor, Tensor]:
        """Both views of N pairs with one parameter set per pair: from ``params`` (N sets,
        e.g. this rank's slice of a global draw, see :meth:`PairParams.take`) or drawn
        from ``generator``."""
        if view1.shape != view2.shape:
            raise ValueError(f"views must have the same shape, got {tuple(view1.shape)} "
                             f"and {tuple(view2.shape)}")
        n = view1.shape[0]
        if params is None:
            if generator is None:
                raise ValueError("give a generator or params")
            params = sample_params(self.cfg, n, generator)
        elif len(params) != n:
            raise ValueError(f"{len(params)} parameter sets for {n} pairs")
        both = self.apply(torch.cat([view1, view2]), _repeat(params))
        return both[:n], both[n:]


_POOL: list[ThreadPoolExecutor] = []


def _chunk_pool() -> ThreadPoolExecutor:
    """One helper thread that runs torch ops on ONE intra-op thread (with OpenMP the
    setting is per thread, so the caller's is untouched). The many small ops of the chunks
    are far slower when each is split over several cores: 2 intra-op threads took 1.5 s per
    128 views at 112 px against 0.1 s on one (2-core machine under load); several helper
    threads did not help either (the chunks' small ops are bound by the GIL)."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpcs-augment",
                                        initializer=torch.set_num_threads, initargs=(1,)))
    return _POOL[0]


@dataclass
class _BatchPlan:
    """Per-image tensors of a batch, prepared once on the batch's device: brightness
    factor [N,1,1,1], lerp weights ``1 - f`` of contrast and saturation [N,1,1,1], hue
    shift [N] and the fused warp [N,2,3]; ``None`` for an operation that changes nothing."""

    params: PairParams
    brightness: Tensor | None
    contrast: Tensor | None
    saturation: Tensor | None
    hue: Tensor | None
    theta: Tensor | None
    hed_scale: Tensor | None = None
    hed_shift: Tensor | None = None

    @classmethod
    def of(cls, p: PairParams, shape: torch.Size, device: torch.device) -> _BatchPlan:
        def factor(v: Tensor, neutral: float, weight: bool) -> Tensor | None:
            if not bool((v != neutral).any()):
                return None
            v = _per_image(v.to(device, torch.float32))
            return 1 - v if weight else v

        hed = p.hed_scale is not None and bool(((p.hed_scale != 1) | (p.hed_shift != 0)).any())
        return cls(p, factor(p.brightness, 1.0, False), factor(p.contrast, 1.0, True),
                   factor(p.saturation, 1.0, True),
                   p.hue.to(device) if bool((p.hue != 0).any()) else None,
                   _fused_theta(p, shape, device),
                   p.hed_scale.to(device) if hed else None,
                   p.hed_shift.to(device) if hed else None)

    def take(self, start: int, stop: int) -> _BatchPlan:
        return _BatchPlan(self.params.take(start, stop),
                          *(None if t is None else t[start:stop] for t in
                            (self.brightness, self.contrast, self.saturation, self.hue,
                             self.theta, self.hed_scale, self.hed_shift)))


_COLOUR_FIELDS = ("brightness", "contrast", "saturation", "hue", "hed_scale", "hed_shift")


def _repeat(p: PairParams) -> PairParams:
    """The parameters of a concatenated [view1; view2] batch: the same set twice, except the
    colour and stain fields of view 2 where they were drawn per view (``p.second``)."""
    two = p.second if p.second is not None else p

    def both(name: str) -> Tensor | None:
        a = getattr(p, name)
        b = getattr(two, name) if name in _COLOUR_FIELDS else a
        return None if a is None else torch.cat([a, b])

    return PairParams(**{k: both(k) for k in vars(p) if k != "second"})


def eval_transform(x: Tensor, input_size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """Deterministic pre-processing for feature extraction: resize and normalise."""
    return normalize(resize(to_float(x), input_size), mean, std)

