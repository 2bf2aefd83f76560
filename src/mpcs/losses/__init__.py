"""Loss functions for self-supervised pre-training on magnification pairs.

``NTXentLoss`` (MPCS, SimCLR), ``BYOLLoss``, ``SimSiamLoss``, ``BarlowTwinsLoss`` and
``VICRegLoss``; :func:`create_loss` builds one by name. Under ``torchrun`` the losses with
batch statistics take them over all ranks (``gather_distributed=True``; :func:`gather_rows`,
see :mod:`mpcs.losses.gather`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mpcs.core.errors import ConfigError
from mpcs.losses.barlow_twins import BarlowTwinsLoss
from mpcs.losses.byol import BYOLLoss
from mpcs.losses.gather import gather_rows
from mpcs.losses.ntxent import NTXentLoss
from mpcs.losses.simsiam import SimSiamLoss
from mpcs.losses.vicreg import VICRegLoss

LOSSES: dict[str, type[nn.Module]] = {
    "ntxent": NTXentLoss,
    "byol": BYOLLoss,
    "simsiam": SimSiamLoss,
    "barlow_twins": BarlowTwinsLoss,
    "vicreg": VICRegLoss,
}


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss ``name`` (one of :data:`LOSSES`) with keyword arguments ``kwargs``."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
    return cls(**kwargs)


__all__ = ["LOSSES", "BYOLLoss", "BarlowTwinsLoss", "NTXentLoss", "SimSiamLoss", "VICRegLoss",
           "create_loss", "gather_rows"]
