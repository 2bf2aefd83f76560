"""Barlow Twins (Zbontar et al., ICML 2021) on magnification pairs: the cross-correlation of
the two magnifications' projections is pushed to the identity
(:class:`mpcs.losses.BarlowTwinsLoss`). The projector runs on each view separately (its
BatchNorm statistics are per view, as in the paper)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mpcs.losses import BarlowTwinsLoss
from mpcs.methods.base import PairMethod, backbone, option
from mpcs.methods.registry import register_method
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


class BarlowTwinsMethod(PairMethod):
    """Encoder + projector, Barlow Twins loss with off-diagonal weight ``lambda_offdiag``."""

    name = "barlow_twins"

    @classmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        return {"method": "Barlow Twins on magnification pairs",
                "loss": "Barlow Twins: cross-correlation of the two projections pushed to the "
                        f"identity, off-diagonal weight {option(cfg, 'barlow_lambda')}"}

    def __init__(self, encoder: Encoder, head: ProjectionHead, lambda_offdiag: float = 5e-3,
                 channels_last: bool = False) -> None:
        super().__init__(encoder, head, channels_last)
        self.loss_fn = BarlowTwinsLoss(lambda_offdiag)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1, h2 = self._encode(x1, x2)
        return self.loss_fn(self.head(h1), self.head(h2))

    def use_global_batch(self, enabled: bool) -> None:
        """Standardisation and cross-correlation over the projections of all ranks."""
        self.loss_fn.gather_distributed = enabled


@register_method(BarlowTwinsMethod)
def build_barlow_twins(cfg: Mapping[str, Any]) -> BarlowTwinsMethod:
    m = backbone(cfg)
    return BarlowTwinsMethod(m.encoder, m.head, option(cfg, "barlow_lambda"),
                             cfg["model"]["channels_last"])
