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

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="cpu-small", overrides=["method=byol", "data.input_size=32"])
    >>> method = create_method(cfg["method"], cfg)
    >>> sorted(list_methods())[:3]
    ['barlow_twins', 'byol', 'mpcs']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mpcs.core.errors import ConfigError
from mpcs.methods.barlow_twins import BarlowTwinsMethod
from mpcs.methods.base import PairMethod, option
from mpcs.methods.byol import BYOLMethod
from mpcs.methods.mpcs import MPCSMethod
from mpcs.methods.simclr import SimCLRMethod
from mpcs.methods.simsiam import SimSiamMethod, SimSiamProjector
from mpcs.methods.vicreg import VICRegMethod
from mpcs.models import create_mpcs_model
from mpcs.models.heads import ProjectionHead

_REGISTRY: dict[str, Callable[[Mapping[str, Any]], PairMethod]] = {}


def register_method(name: str) -> Callable[[Callable[[Mapping[str, Any]], PairMethod]],
                                            Callable[[Mapping[str, Any]], PairMethod]]:
    """Decorator: register a builder ``fn(cfg) -> PairMethod`` under ``name``."""
    def wrap(fn: Callable[[Mapping[str, Any]], PairMethod]
             ) -> Callable[[Mapping[str, Any]], PairMethod]:
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_methods() -> list[str]:
    """Registered method names."""
    return list(_REGISTRY)


def create_method(name: str, cfg: Mapping[str, Any]) -> PairMethod:
    """Build method ``name`` from a resolved pre-training configuration ``cfg``
    (``model.*`` for encoder and head, ``loss.temperature``, ``ssl.*`` for method options).

    Raises:
        ConfigError: for an unknown name.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of "
                          f"{', '.join(_REGISTRY)}") from None
    return builder(cfg)


def _backbone(cfg: Mapping[str, Any]):
    m = cfg["model"]
    return create_mpcs_model(m["encoder"], weights=m["weights"], head_hidden=m["head_hidden"],
                             head_out=m["head_out"], channels_last=m["channels_last"],
                             frozen_stages=m.get("frozen_stages", 0),
                             frozen_norm=m.get("frozen_norm", False))


def _predictor(cfg: Mapping[str, Any]) -> ProjectionHead:
    out = cfg["model"]["head_out"]
    return ProjectionHead(out, [int(option(cfg, "predictor_hidden"))], out)


@register_method("mpcs")
def _mpcs(cfg: Mapping[str, Any]) -> PairMethod:
    m = _backbone(cfg)
    return MPCSMethod(m.encoder, m.head, cfg["loss"]["temperature"],
                      cfg["model"]["channels_last"])


@register_method("simclr")
def _simclr(cfg: Mapping[str, Any]) -> PairMethod:
    m = _backbone(cfg)
    return SimCLRMethod(m.encoder, m.head, cfg["loss"]["temperature"],
                        tuple(option(cfg, "simclr_crop_scale")), cfg["model"]["channels_last"])


@register_method("byol")
def _byol(cfg: Mapping[str, Any]) -> PairMethod:
    m = _backbone(cfg)
    return BYOLMethod(m.encoder, m.head, _predictor(cfg), option(cfg, "momentum"),
                      cfg["model"]["channels_last"])


@register_method("simsiam")
def _simsiam(cfg: Mapping[str, Any]) -> PairMethod:
    m = _backbone(cfg)
    head = SimSiamProjector(m.head.in_dim, list(m.head.hidden_dims), m.head.out_dim)
    return SimSiamMethod(m.encoder, head, _predictor(cfg), cfg["model"]["channels_last"])


@register_method("barlow_twins")
def _barlow(cfg: Mapping[str, Any]) -> PairMethod:
    m = _backbone(cfg)
    return BarlowTwinsMethod(m.encoder, m.head, option(cfg, "barlow_lambda"),
                             cfg["model"]["channels_last"])


@register_method("vicreg")
def _vicreg(cfg: Mapping[str, Any]) -> PairMethod:
    m = _backbone(cfg)
    return VICRegMethod(m.encoder, m.head, tuple(option(cfg, "vicreg_weights")),
                        cfg["model"]["channels_last"])


METHODS: tuple[str, ...] = tuple(_REGISTRY)

__all__ = ["METHODS", "BYOLMethod", "BarlowTwinsMethod", "MPCSMethod", "PairMethod",
           "SimCLRMethod", "SimSiamMethod", "VICRegMethod", "create_method", "list_methods",
           "register_method"]
