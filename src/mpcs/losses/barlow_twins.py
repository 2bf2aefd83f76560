"""Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML 2021, Eq. 1-2).

Each projection dimension is standardised over the batch (the authors' code: BatchNorm1d
without affine parameters, i.e. the biased batch variance and eps 1e-5), then the
cross-correlation matrix of the two views ``C = z1n^T z2n / N`` (D x D) is pushed to the
identity:

    L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2.

The paper uses lambda = 5e-3 (also lightly's default).

With ``gather_distributed=True`` under ``torchrun`` the projections of all ranks are
gathered first (:mod:`mpcs.losses.gather`), so the standardisation and ``C`` are over
the GLOBAL batch: every rank computes the loss of the whole batch, and DDP's gradient
averaging gives the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.losses._checks import check_pair
from mpcs.losses.gather import check_gather_available, gather_rows


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch-standardised cross-correlation ``(D, D)`` of two ``(N, D)`` projections."""
    n = z1.shape[0]
    a = F.batch_norm(z1, None, None, training=True, eps=eps)
    b = F.batch_norm(z2, None, None, training=True, eps=eps)
    return a.T @ b / n


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss: invariance on the diagonal of C, redundancy reduction off it.

    Args:
        lambda_offdiag: weight of the off-diagonal term; must be >= 0.
        gather_distributed: under an initialised process group, compute the loss over the
            projections of all ranks (the global batch).

    Raises:
        ValueError: for a negative weight, or inputs that are not matching (N, D) with N >= 2.

    Shapes:
        z1, z2: projections of views 1 and 2, (N, D), N >= 2. Output: scalar float32.

    Example:
        >>> loss = BarlowTwinsLoss()(torch.randn(16, 32), torch.randn(16, 32))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, lambda_offdiag: float = 5e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        if not lambda_offdiag >= 0:
            raise ValueError(f"Barlow Twins lambda must be >= 0, got {lambda_offdiag!r}")
        check_gather_available("BarlowTwinsLoss", gather_distributed)
        self.lambda_offdiag = float(lambda_offdiag)
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return f"lambda_offdiag={self.lambda_offdiag}, gather_distributed={self.gather_distributed}"

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair("BarlowTwinsLoss", z1, z2, min_batch=2)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            a, b = z1.float(), z2.float()
            if self.gather_distributed:
                a, b = gather_rows(a), gather_rows(b)
            c = cross_correlation(a, b)
            on = (torch.diagonal(c) - 1).pow(2).sum()
            off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
            return on + self.lambda_offdiag * off
