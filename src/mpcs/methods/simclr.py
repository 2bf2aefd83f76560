"""SimCLR (Chen et al., ICML 2020) on single images: the baseline MPCS is measured against.

Both views come from the SAME image (one magnification per sample, drawn uniformly), and each
view gets its OWN random transformation: a random resized crop (area fraction in
``ssl.simclr_crop_scale``, aspect ratio in [3/4, 4/3]) followed by the configured
augmentation with an independently drawn parameter set. Encoder, head and NT-Xent are MPCS's,
so the only difference to MPCS is where the positive pair comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mpcs.data.transforms import UniformPairAugment, sample_params, to_float
from mpcs.data.transforms.geometry import crop_resize
from mpcs.methods.base import backbone, option
from mpcs.methods.mpcs import MPCSMethod
from mpcs.methods.registry import register_method
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


def random_resized_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                         generator: torch.Generator,
                         ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """``n`` crop boxes ``[n, 4]`` (x0, y0, x1, y1 in pixels) of area fraction in ``scale``
    and aspect ratio in ``ratio`` (log-uniform), clipped to the image, at uniform positions."""
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(1, width)
    h = torch.sqrt(area / aspect).clamp(1, height)
    x0 = (width - w) * torch.rand(n, generator=generator)
    y0 = (height - h) * torch.rand(n, generator=generator)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


class SimCLRMethod(MPCSMethod):
    """MPCS's network and loss on two independent augmentations of the same image.

    Args:
        crop_scale: (min, max) area fraction of the random resized crop; (1, 1) disables it.
    """

    name = "simclr"
    same_image = True

    @classmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        return {"method": "SimCLR: a positive pair is two random crops and augmentations of "
                          "the same image (crop area fraction "
                          f"{list(option(cfg, 'simclr_crop_scale'))})",
                "loss": f"NT-Xent, temperature {cfg['loss']['temperature']}"}

    def __init__(self, encoder: Encoder, head: ProjectionHead, temperature: float = 0.1,
                 crop_scale: tuple[float, float] = (0.35, 1.0), channels_last: bool = False
                 ) -> None:
        super().__init__(encoder, head, temperature, channels_last)
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))

    def make_views(self, aug: UniformPairAugment, v1: Tensor, v2: Tensor,
                   generator: torch.Generator, global_pairs: int | None = None, first: int = 0
                   ) -> tuple[Tensor, Tensor]:
        """Each view with its own crop and parameter set, drawn for the global batch (all
        ranks draw the same) and sliced to this rank's rows ``first:first + N``."""
        n = v1.shape[0]
        rows = slice(first, first + n)
        total = global_pairs or n
        out = []
        for v in (v1, v2):
            x = to_float(v)
            if self.crop_scale != (1.0, 1.0):
                boxes = random_resized_boxes(total, x.shape[-2], x.shape[-1], self.crop_scale,
                                             generator)
                x = crop_resize(x, boxes[rows], x.shape[-1])
            params = sample_params(aug.cfg, total, generator).take(first, first + n)
            out.append(aug.apply(x, params))
        return out[0], out[1]


@register_method(SimCLRMethod)
def build_simclr(cfg: Mapping[str, Any]) -> SimCLRMethod:
    m = backbone(cfg)
    return SimCLRMethod(m.encoder, m.head, cfg["loss"]["temperature"],
                        tuple(option(cfg, "simclr_crop_scale")), cfg["model"]["channels_last"])
