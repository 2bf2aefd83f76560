"""VICReg (Bardes et al., ICLR 2022) on magnification pairs: invariance between the two
magnifications' embeddings, variance and covariance regularisation of each
(:class:`mpcs.losses.VICRegLoss`). The expander runs on each view separately."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mpcs.losses import VICRegLoss
from mpcs.methods.base import PairMethod, backbone, option
from mpcs.methods.registry import register_method
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


class VICRegMethod(PairMethod):
    """Encoder + expander, VICReg loss with weights ``(lambda, mu, nu)``."""

    name = "vicreg"

    @classmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        lam, mu, nu = option(cfg, "vicreg_weights")
        return {"method": "VICReg on magnification pairs",
                "loss": f"VICReg: invariance {lam}, variance {mu}, covariance {nu}"}

    def __init__(self, encoder: Encoder, head: ProjectionHead,
                 weights: Sequence[float] = (25.0, 25.0, 1.0), channels_last: bool = False
                 ) -> None:
        super().__init__(encoder, head, channels_last)
        lam, mu, nu = weights
        self.loss_fn = VICRegLoss(lambda_inv=lam, mu_var=mu, nu_cov=nu)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1, h2 = self._encode(x1, x2)
        return self.loss_fn(self.head(h1), self.head(h2))

    def use_global_batch(self, enabled: bool) -> None:
        """Invariance, variance and covariance over the embeddings of all ranks."""
        self.loss_fn.gather_distributed = enabled


@register_method(VICRegMethod)
def build_vicreg(cfg: Mapping[str, Any]) -> VICRegMethod:
    m = backbone(cfg)
    return VICRegMethod(m.encoder, m.head, tuple(option(cfg, "vicreg_weights")),
                        cfg["model"]["channels_last"])
