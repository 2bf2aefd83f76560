"""What every pre-training method shares: an encoder, a projection head, a loss on a pair
of views, and how the two views of a pair are made.

A method is an ``nn.Module`` whose ``forward(x1, x2)`` returns the scalar training loss of a
batch of N pairs (``x1``, ``x2``: normalised float views ``[N, 3, S, S]``); wrapping it in
DistributedDataParallel therefore synchronises every parameter that takes part in the loss.
``encoder`` is what downstream tasks keep; ``head`` is the projection head (t-SNE of
projections, inference). Methods with a momentum encoder update it in :meth:`after_step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpcs.data.transforms import UniformPairAugment
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


class PairMethod(nn.Module):
    """Base class of the self-supervised methods on (magnification) pairs.

    Class attributes:
        name: registry name.
        same_image: True when both views come from the SAME image (SimCLR); False when they
            are the same region at two magnifications (every other method).
    """

    name: ClassVar[str] = ""
    same_image: ClassVar[bool] = False

    def __init__(self, encoder: Encoder, head: ProjectionHead, channels_last: bool = False
                 ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.channels_last = channels_last

    def _encode(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder features of both views (one pass over the concatenated batch)."""
        x = torch.cat([x1, x2])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.encoder(x)
        return h[:len(x1)], h[len(x1):]

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Scalar loss of N pairs of views ``[N, 3, S, S]``."""
        raise NotImplementedError

    def make_views(self, aug: UniformPairAugment, v1: Tensor, v2: Tensor,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Network inputs from raw uint8 views ``[N, 3, H, W]``: by default MPCS's uniform
        transformation (one parameter set per pair, applied to both views)."""
        return aug(v1, v2, generator)

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts from 1); momentum updates."""

    def loggable(self) -> dict[str, float]:
        """Per-epoch values worth logging (e.g. the current EMA momentum)."""
        return {}


def option(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg["ssl"][key]`` of a resolved configuration (a checkpoint's configuration is
    completed with the defaults before a method is rebuilt from it)."""
    return cfg["ssl"][key]
