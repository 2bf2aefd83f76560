"""Test-time augmentation: the views of a batch whose predictions are averaged
(``transfer.tta``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpcs.core.errors import ConfigError

#: ``transfer.tta`` choices: the identity, the four flips, or the eight dihedral views.
TTA_KINDS: tuple[str, ...] = ("none", "flips", "dihedral")


def tta_views(kind: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Test-time views of a batch ``[N, 3, H, W]``: ``none`` (identity), ``flips`` (identity,
    horizontal, vertical, both) or ``dihedral`` (the 8 flips and 90-degree rotations)."""
    if kind == "none":
        return [lambda x: x]
    if kind == "flips":
        return [lambda x: x, lambda x: x.flip(-1), lambda x: x.flip(-2),
                lambda x: x.flip(-1).flip(-2)]
    if kind == "dihedral":
        return [(lambda x, k=k, f=f: torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1)))
                for f in (False, True) for k in range(4)]
    raise ConfigError(f"transfer.tta must be none, flips or dihedral, got {kind!r}")
