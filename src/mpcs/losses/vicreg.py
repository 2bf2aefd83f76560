"""VICReg's variance-invariance-covariance loss (Bardes et al., ICLR 2022, Eq. 1-6).

For projections ``z1, z2`` of shape (N, D):

* invariance ``s = mean_i ||z1_i - z2_i||^2 / D`` (the mean squared error);
* variance ``v(z) = mean_j max(0, 1 - sqrt(Var(z_j) + eps))`` with the unbiased batch
  variance and eps = 1e-4, averaged over the two branches (the authors' code);
* covariance ``c(z) = sum_{i != j} Cov(z)_ij^2 / D`` with the unbiased covariance, summed
  over the two branches;

    L = lambda * s + mu * (v(z1) + v(z2)) / 2 + nu * (c(z1) + c(z2)),

with the paper's lambda = mu = 25, nu = 1. Equals ``lightly.loss.VICRegLoss``.

With ``gather_distributed=True`` under ``torchrun`` the embeddings of all ranks are gathered
first (:mod:`mpcs.losses.gather`): the three terms are over the GLOBAL batch, every
rank computes the loss of the whole batch, and DDP's gradient averaging gives the
single-process gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.losses._checks import check_pair
from mpcs.losses.gather import check_gather_available, gather_rows


def variance_term(z: Tensor, eps: float = 1e-4) -> Tensor:
    """Hinge on the per-dimension standard deviation: ``mean_j relu(1 - std_j)``."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances divided by D."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


class VICRegLoss(nn.Module):
    """VICReg loss with weights ``lambda`` (invariance), ``mu`` (variance), ``nu`` (covariance).

    With ``gather_distributed`` the three terms are over the embeddings of all ranks.

    Raises:
        ValueError: for a negative weight, or inputs that are not matching (N, D) with N >= 2.

    Shapes:
        z1, z2: (N, D) with N >= 2. Output: scalar float32 tensor.

    Example:
        >>> loss = VICRegLoss()(torch.randn(16, 32), torch.randn(16, 32))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, lambda_inv: float = 25.0, mu_var: float = 25.0, nu_cov: float = 1.0,
                 eps: float = 1e-4, gather_distributed: bool = False) -> None:
        super().__init__()
        for name, value in (("lambda", lambda_inv), ("mu", mu_var), ("nu", nu_cov)):
            if not value >= 0:
                raise ValueError(f"VICReg weight {name} must be >= 0, got {value!r}")
        self.lambda_inv, self.mu_var, self.nu_cov = float(lambda_inv), float(mu_var), float(nu_cov)
        check_gather_available("VICRegLoss", gather_distributed)
        self.eps = float(eps)
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return (f"lambda={self.lambda_inv}, mu={self.mu_var}, nu={self.nu_cov}, "
                f"gather_distributed={self.gather_distributed}")

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair("VICRegLoss", z1, z2, min_batch=2)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            a, b = z1.float(), z2.float()
            if self.gather_distributed:
                a, b = gather_rows(a), gather_rows(b)
            inv = F.mse_loss(a, b)
            var = 0.5 * (variance_term(a, self.eps) + variance_term(b, self.eps))
            cov = covariance_term(a) + covariance_term(b)
            return self.lambda_inv * inv + self.mu_var * var + self.nu_cov * cov
