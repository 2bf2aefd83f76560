"""BYOL (Grill et al., NeurIPS 2020) on magnification pairs.

Online network: encoder -> projector (``head``) -> predictor. Target network: an exponential
moving average of encoder and projector, updated after every optimiser step with momentum
``tau_k = 1 - (1 - tau_0) (cos(pi k / K) + 1) / 2`` rising from ``ssl.momentum`` to 1 over
the K steps of the run. The loss regresses the target projection of one magnification from
the online prediction of the other (:class:`mpcs.losses.BYOLLoss`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mpcs.losses import BYOLLoss
from mpcs.methods.base import PairMethod, backbone, option, predictor
from mpcs.methods.registry import register_method
from mpcs.models.encoders import Encoder
from mpcs.models.heads import ProjectionHead


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) (cos(pi step / total) + 1) / 2``."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * frac) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` (parameters); buffers
    (BatchNorm statistics) are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


class BYOLMethod(PairMethod):
    """Online encoder + projector + predictor; momentum target encoder + projector."""

    name = "byol"

    @classmethod
    def describe(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        return {"method": "BYOL on magnification pairs (online network with predictor, "
                          f"momentum target from {option(cfg, 'momentum')} rising to 1)",
                "loss": "BYOL: normalised squared error between the online prediction of one "
                        "magnification and the target projection of the other, symmetrised"}

    def __init__(self, encoder: Encoder, head: ProjectionHead, predictor: ProjectionHead,
                 momentum: float = 0.99, channels_last: bool = False) -> None:
        super().__init__(encoder, head, channels_last)
        if not 0 <= momentum <= 1:
            raise ValueError(f"BYOL momentum must be in [0, 1], got {momentum}")
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(head).requires_grad_(False)
        self.base_momentum = float(momentum)
        self.momentum = float(momentum)
        self.loss_fn = BYOLLoss()

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        h1, h2 = self._encode(x1, x2)
        p1, p2 = self.predictor(self.head(h1)), self.predictor(self.head(h2))
        with torch.no_grad():
            x = torch.cat([x1, x2])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            t = self.target_encoder(x)
            z1, z2 = self.target_head(t[:len(x1)]), self.target_head(t[len(x1):])
        return self.loss_fn(p1, p2, z1, z2)

    def use_global_batch(self, enabled: bool) -> None:
        """Nothing to gather: the loss is a mean of per-pair terms, so DDP's average of the
        ranks' gradients is the global batch's gradient; the target network follows the
        online one, which is the same on every rank after each step."""

    def after_step(self, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.target_encoder, self.encoder, self.momentum)
        ema_update(self.target_head, self.head, self.momentum)

    def loggable(self) -> dict[str, float]:
        return {"momentum": self.momentum}


@register_method(BYOLMethod)
def build_byol(cfg: Mapping[str, Any]) -> BYOLMethod:
    m = backbone(cfg)
    return BYOLMethod(m.encoder, m.head, predictor(cfg), option(cfg, "momentum"),
                      cfg["model"]["channels_last"])
