"""BYOL's regression loss (Grill et al., NeurIPS 2020, Eq. 2).

The online network's prediction ``p`` of one view regresses the target network's projection
``z`` of the other view; both are l2-normalised, so the mean squared error is

    L(p, z) = || p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)

and the symmetric BYOL loss is ``L(p1, z2) + L(p2, z1)`` (the paper sums the two terms). The
target ``z`` never receives a gradient (it comes from the momentum encoder; it is detached
here as well). With magnification pairs, view 1 and view 2 are the same region at two
magnifications.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.losses._checks import check_pair


def byol_regression(p: Tensor, z: Tensor) -> Tensor:
    """Mean over the batch of ``2 - 2 cos(p_i, z_i)``; ``z`` is detached. Shapes (N, D) -> ()."""
    check_pair("BYOLLoss", p, z)
    with torch.autocast(device_type=p.device.type, enabled=False):
        cos = F.cosine_similarity(p.float(), z.detach().float(), dim=1, eps=1e-8)
        return (2 - 2 * cos).mean()


class BYOLLoss(nn.Module):
    """Symmetric BYOL loss ``L(p1, z2) + L(p2, z1)`` with ``L(p, z) = 2 - 2 cos(p, z)``.

    Shapes:
        p1, p2: online predictions of views 1 and 2, (N, D). z1, z2: target projections of
        views 1 and 2, (N, D). Output: scalar float32 tensor in [0, 8].

    Example:
        >>> loss_fn = BYOLLoss()
        >>> p1, p2, z1, z2 = (torch.randn(8, 32) for _ in range(4))
        >>> float(loss_fn(p1, p2, z1, z2)) <= 8
        True
    """

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        return byol_regression(p1, z2) + byol_regression(p2, z1)
