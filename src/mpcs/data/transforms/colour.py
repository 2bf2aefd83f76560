"""Colour operations with one factor per image of a batch (torchvision's definitions), and
H&E stain jitter in HED space."""

from __future__ import annotations

import torch
from torch import Tensor

from mpcs.data.transforms.params import PairParams, per_image

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


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * per_image(factor)).clamp_(0, 1)


def gray_mean(x: Tensor) -> Tensor:
    """Mean gray level of each image, [N, 1, 1, 1] (the mean of ``_gray``: it is linear)."""
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device)
    return (x.mean(dim=(2, 3)) @ w).view(-1, 1, 1, 1)


def gray_into(x: Tensor) -> Tensor:
    """``_gray(x)`` with three fused multiply-adds on one buffer."""
    r, g, b = _GRAY_WEIGHTS
    out = x[:, 0:1] * r
    return out.add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b)


def _contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """In place: blend each image with its mean gray level (``f x + (1 - f) mean``)."""
    return x.lerp_(gray_mean(x).expand_as(x), 1 - per_image(factor)).clamp_(0, 1)


def _saturation_(x: Tensor, factor: Tensor) -> Tensor:
    """In place: blend each pixel with its gray value (``f x + (1 - f) gray``)."""
    return x.lerp_(gray_into(x).expand_as(x), 1 - per_image(factor)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _saturation_(x.clone(), factor)


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


def colour_jitter(x: Tensor, p: PairParams, inplace: bool = False) -> Tensor:
    """Brightness, contrast, saturation, hue, in this order (each skipped when all its
    factors are neutral). ``x`` is modified only with ``inplace=True``."""
    dev = x.device
    steps = [bool((p.contrast != 1).any()), bool((p.saturation != 1).any()),
             bool((p.hue != 0).any())]
    if bool((p.brightness != 1).any()):
        f = per_image(p.brightness.to(dev))
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
