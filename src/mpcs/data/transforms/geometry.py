"""Geometric operations with one parameter set per image of a batch: flips and quarter turns,
rotation plus translation in one bilinear warp, resizing, and crops resized to a square."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from mpcs.data.transforms.params import PairParams, per_image


def flip_rotate(x: Tensor, p: PairParams) -> Tensor:
    """Per-image horizontal/vertical flips and 90-degree rotations (square images only)."""
    x = torch.where(per_image(p.hflip.to(x.device)), x.flip(-1), x)
    x = torch.where(per_image(p.vflip.to(x.device)), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        k = p.rot90.to(x.device)
        for turns in (1, 2, 3):
            x = torch.where(per_image(k == turns), torch.rot90(x, turns, dims=(-2, -1)), x)
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


def warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = _affine_grid(theta, x.shape[-2], x.shape[-1])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def rotate_translate(x: Tensor, angle_deg: Tensor, shift: Tensor) -> Tensor:
    """Rotate about the centre by ``angle_deg`` (counter-clockwise) and shift by ``shift``
    (fractions of width/height) in one bilinear warp with reflected borders."""
    if not bool((angle_deg != 0).any() or (shift != 0).any()):
        return x
    return warp(x, _warp_theta(angle_deg, shift, x.device))


def fused_theta(p: PairParams, shape: torch.Size, device: torch.device) -> Tensor | None:
    """[N, 2, 3] maps of flips, quarter turns, rotation and shift in one, or ``None`` when
    there is nothing to warp (no rotation or shift) or the images are not square."""
    if not bool((p.angle != 0).any() or (p.shift != 0).any()) or shape[-1] != shape[-2]:
        return None
    theta = _warp_theta(p.angle, p.shift, device)
    return _flip_rot_matrix(p, device) @ theta  # [A_f A_w | A_f b_w]


def resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def crop_resize(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop box ``i`` (x0, y0, x1, y1 in pixels, float) of image ``i`` and resize it to
    ``size x size``: float ``[N, C, H, W]`` and ``[N, 4]`` -> float ``[N, C, size, size]``."""
    if boxes.shape != (x.shape[0], 4):
        raise ValueError(f"need one box [x0, y0, x1, y1] per image: {x.shape[0]} images, "
                         f"boxes of shape {tuple(boxes.shape)}")
    rois = torch.cat([torch.arange(len(x), dtype=x.dtype, device=x.device)[:, None],
                      boxes.to(x.device, x.dtype)], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)
