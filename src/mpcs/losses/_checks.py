"""Shape checks shared by the pair losses."""

from __future__ import annotations

from torch import Tensor


def check_pair(name: str, a: Tensor, b: Tensor, min_batch: int = 1) -> None:
    """Raise ValueError unless ``a`` and ``b`` are matching (N, D) tensors with N >= min_batch."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{name} expects 2-D inputs of shape (N, D); got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    if a.shape != b.shape:
        raise ValueError(f"{name} inputs must have the same shape; got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    if a.shape[0] < min_batch:
        raise ValueError(f"{name} needs a batch of at least {min_batch} pairs (its statistics "
                         f"are over the batch); got N={a.shape[0]}.")
