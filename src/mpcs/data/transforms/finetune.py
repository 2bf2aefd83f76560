"""The fine-tuning augmentation: a parameter draw PER IMAGE (random resized crop, colour
jitter, flips and quarter turns, small rotation + translation), unlike the uniform
transformation of pre-training, which draws one set per pair."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mpcs.data.transforms.augment import normalize, to_float
from mpcs.data.transforms.colour import colour_jitter
from mpcs.data.transforms.geometry import flip_rotate, rotate_translate
from mpcs.data.transforms.params import AugmentConfig, sample_params


def random_resized_crop(x: Tensor, size: int, scale: Sequence[float], ratio: Sequence[float],
                        g: torch.Generator) -> Tensor:
    """Per-image random resized crop of a float batch ``[N, 3, H, W]`` to ``size x size``.

    Each image draws its own area fraction in ``scale`` and aspect ratio (log-uniform) in
    ``ratio``, as torchvision's ``RandomResizedCrop``; the crop sides are capped at the image
    and its centre is uniform over the positions that keep it inside. One bilinear warp.
    """
    n = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, generator=g)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)   # fractions of the image width / height
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (torch.rand(n, generator=g) - 0.5)  # centre offset, fraction of the side
    cy = (1 - h) * (torch.rand(n, generator=g) - 0.5)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2], theta[:, 1, 2] = 2 * cx, 2 * cy
    grid = F.affine_grid(theta.to(x.device), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


class FinetuneAugment:
    """Training augmentation with a parameter draw PER IMAGE: random resized crop, colour
    jitter, flips and 90-degree rotations, small rotation + translation (affine), normalise.

    Call with uint8 ``[N, 3, H, W]`` (any device) and a CPU generator; returns float
    ``[N, 3, input_size, input_size]``.
    """

    def __init__(self, cfg: Mapping[str, Any], input_size: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        a = dict(cfg)
        self.scale = tuple(a.pop("crop_scale"))
        self.ratio = tuple(a.pop("crop_ratio"))
        self.cfg = AugmentConfig(**a)
        self.cfg.validate()
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        n = x.shape[0]
        x = random_resized_crop(to_float(x), self.input_size, self.scale, self.ratio, g)
        p = sample_params(self.cfg, n, g)
        x = colour_jitter(x, p)
        x = flip_rotate(x, p)
        x = rotate_translate(x, p.angle, p.shift)
        return normalize(x, self.mean, self.std)
