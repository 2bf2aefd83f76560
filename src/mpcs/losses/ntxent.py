"""Symmetric NT-Xent (normalised temperature-scaled cross entropy) loss over 2N views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.losses.gather import check_gather_available, gather_rows, world


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent loss, symmetric over all 2N views.

    In MPCS the two views of a sample are the same histology region seen at two
    magnifications. The two batches are stacked into 2N views ``z = [z1; z2]``; every view is an
    anchor, its positive is its partner in the other batch, and the remaining 2N - 2 views are
    its negatives. With cosine similarity ``s`` and temperature ``tau`` the loss is

        loss = 1/(2N) * sum_i -log( exp(s(i, p(i)) / tau) / sum_{k != i} exp(s(i, k) / tau) )

    where ``p(i) = (i + N) mod 2N``. This is the same value as ``lightly.loss.NTXentLoss``
    without a memory bank. Similarities and the cross entropy are computed in float32 with
    autocast disabled, so low temperatures (e.g. 0.01) are safe for bf16/fp16 inputs.

    With ``gather_distributed=True`` and an initialised process group of world size W > 1, the
    views of all ranks are gathered (with a backward pass that sums the gradients of all ranks)
    and serve as negatives; the anchors stay the local 2N views. The average of the per-rank
    losses then equals the single-process loss on the concatenated batch, and DDP's gradient
    averaging yields the single-process gradient. Every rank must use the same batch size N.

    Args:
        temperature: Scale of the logits, ``s / temperature``; must be > 0.
        gather_distributed: Use the views of all ranks as negatives when running distributed.

    Raises:
        ValueError: If ``temperature <= 0``, or ``gather_distributed`` is requested but
            ``torch.distributed`` is not available.

    Shapes:
        z1, z2: (N, D) with N >= 2; any float dtype. Output: scalar float32 tensor.

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.1)
        >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)  # projections of the two views
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"Illegal temperature {temperature!r}: it must be > 0.")
        check_gather_available("NTXentLoss", gather_distributed)
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            z1: Projections of the first view (e.g. magnification A), shape (N, D).
            z2: Projections of the second view (magnification B), shape (N, D); row i of
                ``z2`` is the positive of row i of ``z1``.

        Returns:
            Scalar float32 tensor: mean loss over the 2N local anchors.
        """
        _check_pair(z1, z2)
        n = z1.shape[0]
        # Autocast would silently send the matmul back to half precision.
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # (2N, D)
            z_all, rank = self._gather(z)  # (W * 2N, D)
            logits = (z @ z_all.T) / self.temperature  # (2N, W * 2N)

            local = torch.arange(2 * n, device=z.device)
            offset = rank * 2 * n
            self_mask = torch.zeros_like(logits, dtype=torch.bool)
            self_mask[local, offset + local] = True
            logits = logits.masked_fill(self_mask, torch.finfo(logits.dtype).min)

            labels = offset + (local + n) % (2 * n)
            return F.cross_entropy(logits, labels)

    def _gather(self, z: Tensor) -> tuple[Tensor, int]:
        """Return the views of all ranks, shape (W * 2N, D) ordered by rank, and this rank
        (see :mod:`mpcs.losses.gather`: the backward pass sums all ranks' gradients)."""
        if not self.gather_distributed:
            return z, 0
        return gather_rows(z), world()[0]


def _check_pair(z1: Tensor, z2: Tensor) -> None:
    """Raise ValueError unless z1 and z2 are matching (N, D) tensors with N >= 2."""
    if z1.ndim != 2 or z2.ndim != 2:
        raise ValueError(
            f"NTXentLoss expects 2-D inputs of shape (N, D); got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}."
        )
    if z1.shape != z2.shape:
        raise ValueError(
            f"NTXentLoss inputs must have the same shape; got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}."
        )
    if z1.shape[0] < 2:
        raise ValueError(
            f"NTXentLoss needs a batch of at least 2 pairs (one negative); got N={z1.shape[0]}."
        )
