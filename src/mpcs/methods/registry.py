"""Methods by name (timm style): each method's file registers its builder beside it.

Adding a method: one new file in :mod:`mpcs.methods` with a :class:`~mpcs.methods.base.PairMethod`
subclass and a builder decorated with ``@register_method("name")``, plus its import in
``mpcs/methods/__init__.py`` (which runs the registration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mpcs.core.errors import ConfigError
from mpcs.methods.base import PairMethod

Builder = Callable[[Mapping[str, Any]], PairMethod]
_REGISTRY: dict[str, Builder] = {}


def register_method(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``fn(cfg) -> PairMethod`` under ``name``."""
    def wrap(fn: Builder) -> Builder:
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
