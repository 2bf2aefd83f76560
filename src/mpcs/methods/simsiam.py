"""SimSiam (Chen and He, CVPR 2021) on magnification pairs.

One encoder + projector (the projector's output layer is followed by BatchNorm without affine
parameters, as in the paper) and a bottleneck predictor; the loss
(:class:`mpcs.losses.SimSiamLoss`) stops the gradient through the projections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mpcs.losses import SimSiamLoss
from mpcs.methods.base import PairMethod, backbone, predictor
from mpcs.methods.registry import register_method
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


class SimSiamProjector(ProjectionHead):
    """:class:`ProjectionHead` with BatchNorm (no affine) on its output, as in SimSiam."""

    def __init__(self, in_dim: int, hidden_dims: list[int], out_dim: int) -> None:
        super().__init__(in_dim, hidden_dims, out_dim)
        self.net.append(nn.BatchNorm1d(out_dim, affine=False))


class SimSiamMethod(PairMethod):
    """Encoder + projector + predictor, symmetric negative cosine with stop-gradient."""

    name = "simsiam"

    @classmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        return {"method": "SimSiam on magnification pairs (projector and predictor, no "
                          "negatives, no momentum encoder)",
                "loss": "SimSiam: symmetric negative cosine similarity, gradient stopped "
                        "through the projections"}

    def __init__(self, encoder: Encoder, head: ProjectionHead, predictor: ProjectionHead,
                 channels_last: bool = False) -> None:
        super().__init__(encoder, head, channels_last)
        self.predictor = predictor
        self.loss_fn = SimSiamLoss()

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1, h2 = self._encode(x1, x2)
        z1, z2 = self.head(h1), self.head(h2)
        return self.loss_fn(self.predictor(z1), self.predictor(z2), z1, z2)

    def use_global_batch(self, enabled: bool) -> None:
        """Nothing to gather: the loss is a mean of per-pair terms, so DDP's average of the
        ranks' gradients is the global batch's gradient."""


@register_method(SimSiamMethod)
def build_simsiam(cfg: Mapping[str, Any]) -> SimSiamMethod:
    m = backbone(cfg)
    head = SimSiamProjector(m.head.in_dim, list(m.head.hidden_dims), m.head.out_dim)
    return SimSiamMethod(m.encoder, head, predictor(cfg), cfg["model"]["channels_last"])
