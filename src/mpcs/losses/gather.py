"""The global batch of a distributed run: every rank's rows, gathered with a gradient.

Under ``torchrun`` each rank holds a contiguous slice of the step's global batch. A loss
whose value depends on the whole batch (NT-Xent's negatives, Barlow Twins' cross-correlation,
VICReg's variance and covariance) gathers the slices of all ranks with
:func:`torch.distributed.nn.functional.all_gather`, whose backward pass SUMS the gradients
that every rank's loss sends to a slice (a plain ``all_gather`` keeps only the local one).

Two ways to use it give the single-process gradient after DDP averages the parameter
gradients over the W ranks:

* every rank computes the loss of the WHOLE gathered batch (the same value everywhere):
  the local rows receive W times their gradient, DDP divides by W (Barlow Twins, VICReg);
* every rank computes the mean over its OWN anchors against the gathered rows (NT-Xent):
  the mean of the ranks' losses is the global loss, and the summed gradients averaged by
  DDP are its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch import distributed as torch_dist

try:
    from torch.distributed.nn.functional import all_gather as _all_gather_with_grad
except ImportError:  # pragma: no cover - a torch build without torch.distributed
    _all_gather_with_grad = None


def check_gather_available(loss_name: str, gather_distributed: bool) -> None:
    """Raise ValueError when ``gather_distributed`` is asked of a torch without it."""
    if gather_distributed and (not torch_dist.is_available() or _all_gather_with_grad is None):
        raise ValueError(
            f"{loss_name}: gather_distributed=True but torch.distributed is not available in "
            "this torch build; set gather_distributed=False.")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def gather_rows(z: Tensor) -> Tensor:
    """The rows of every rank, ``(W * N, D)`` in rank order (``z`` itself for one process);
    the backward pass sums the gradients of all ranks into each rank's rows. Every rank must
    hold the same number of rows N."""
    if world()[1] == 1:
        return z
    return torch.cat(_all_gather_with_grad(z), dim=0)
