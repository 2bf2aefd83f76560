"""MPCS (Chhipa et al., WACV 2023): NT-Xent on magnification pairs with the uniform transform.

The state dict (``encoder.*``, ``head.*``) is the same as :class:`mpcs.models.MPCSModel`'s,
so MPCS checkpoints are unchanged by the method registry, and the loss and its gradients are
those of ``MPCSModel`` on the concatenated views followed by NT-Xent. Under ``torchrun``
NT-Xent takes its negatives from all ranks (:meth:`MPCSMethod.use_global_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mpcs.losses import NTXentLoss
from mpcs.methods.base import PairMethod, backbone
from mpcs.methods.registry import register_method
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


class MPCSMethod(PairMethod):
    """Encoder + projection head, NT-Xent over the 2N views of N magnification pairs.

    The head sees the 2N views as one batch (its BatchNorm statistics are over both views),
    exactly as :class:`~mpcs.models.MPCSModel` in the original training step.

    Example:
        >>> from mpcs.models import create_mpcs_model
        >>> m = create_mpcs_model("resnet18", weights="none", head_hidden=[32], head_out=16)
        >>> method = MPCSMethod(m.encoder, m.head, temperature=0.1)
        >>> method(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)).shape
        torch.Size([])
    """

    name = "mpcs"

    @classmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        return {"method": "MPCS (Magnification Prior Contrastive Similarity): a positive pair "
                          "is one tissue sample seen at two magnifications",
                "loss": f"NT-Xent, temperature {cfg['loss']['temperature']}"}

    def __init__(self, encoder: Encoder, head: ProjectionHead, temperature: float = 0.1,
                 channels_last: bool = False) -> None:
        super().__init__(encoder, head, channels_last)
        self.loss_fn = NTXentLoss(temperature=temperature)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1, h2 = self._encode(x1, x2)
        z = self.head(torch.cat([h1, h2]))
        n = len(h1)
        return self.loss_fn(z[:n].float(), z[n:].float())

    def use_global_batch(self, enabled: bool) -> None:
        """Negatives from the views of all ranks (each rank's anchors are its own views)."""
        self.loss_fn.gather_distributed = enabled


@register_method(MPCSMethod)
def build_mpcs(cfg: Mapping[str, Any]) -> MPCSMethod:
    m = backbone(cfg)
    return MPCSMethod(m.encoder, m.head, cfg["loss"]["temperature"],
                      cfg["model"]["channels_last"])
