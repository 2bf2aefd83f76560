"""Self-supervised pre-training methods on pairs of views, built by name (timm style).

==============  ==========================================================================
method          positive pair / objective
==============  ==========================================================================
mpcs            same region at two magnifications, uniform transform, NT-Xent (the paper)
simclr          two independent augmentations (random resized crop + transform) of the SAME
                image, NT-Xent: the single-image baseline
byol            magnification pair, online predictor regresses a momentum target
simsiam         magnification pair, predictor + stop-gradient, negative cosine
barlow_twins    magnification pair, cross-correlation -> identity
vicreg          magnification pair, variance-invariance-covariance
==============  ==========================================================================

Every method implements :class:`PairMethod` (the contract the training loop calls, including
what ``torchrun`` needs; see :mod:`mpcs.methods.base`) and registers its builder beside it
(:func:`register_method`); importing it here runs the registration.

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="cpu-small", overrides=["method=byol", "data.input_size=32"])
    >>> method = create_method(cfg["method"], cfg)
    >>> sorted(list_methods())[:3]
    ['barlow_twins', 'byol', 'mpcs']
"""

from __future__ import annotations

from mpcs.methods.barlow_twins import BarlowTwinsMethod
from mpcs.methods.base import PairMethod, option
from mpcs.methods.byol import BYOLMethod
from mpcs.methods.mpcs import MPCSMethod
from mpcs.methods.registry import create_method, list_methods, method_class, register_method
from mpcs.methods.simclr import SimCLRMethod
from mpcs.methods.simsiam import SimSiamMethod, SimSiamProjector
from mpcs.methods.vicreg import VICRegMethod

METHODS: tuple[str, ...] = tuple(list_methods())

__all__ = ["METHODS", "BYOLMethod", "BarlowTwinsMethod", "MPCSMethod", "PairMethod",
           "SimCLRMethod", "SimSiamMethod", "SimSiamProjector", "VICRegMethod", "create_method",
           "list_methods", "method_class", "option", "register_method"]
