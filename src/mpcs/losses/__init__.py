"""Loss functions for MPCS pre-training."""

from mpcs.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss"]
