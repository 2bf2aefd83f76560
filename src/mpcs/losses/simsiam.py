"""SimSiam's loss (Chen and He, CVPR 2021, Eq. 1-3).

With the negative cosine similarity ``D(p, z) = -cos(p, stopgrad(z))`` the symmetric loss is

    L = D(p1, z2) / 2 + D(p2, z1) / 2,

where ``p`` is the predictor's output for one view and ``z`` the projection of the other view
by the SAME encoder; the stop-gradient on ``z`` is what prevents collapse. Its minimum is -1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.losses._checks import check_pair


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``-mean_i cos(p_i, z_i)`` with ``z`` detached (the paper's D). Shapes (N, D) -> ()."""
    check_pair("SimSiamLoss", p, z)
    with torch.autocast(device_type=p.device.type, enabled=False):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1, eps=1e-8).mean()


class SimSiamLoss(nn.Module):
    """Symmetric SimSiam loss ``D(p1, z2)/2 + D(p2, z1)/2`` in [-1, 1].

    Shapes:
        p1, p2: predictions of views 1 and 2, (N, D); z1, z2: projections, (N, D).
        Output: scalar float32 tensor.

    Example:
        >>> z = torch.randn(8, 32)
        >>> round(float(SimSiamLoss()(z, z, z, z)), 4)
        -1.0
    """

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
