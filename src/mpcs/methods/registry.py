"""Methods by name (timm style): each method's file registers its builder beside it.

Adding a method: one new file in :mod:`mpcs.methods` with a
:class:`~mpcs.methods.base.PairMethod` subclass (its ``name`` is the registry key) and a
builder decorated with ``@register_method(TheClass)``, plus its import in
``mpcs/methods/__init__.py`` (which runs the registration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mpcs.core.errors import ConfigError
from mpcs.methods.base import PairMethod

Builder = Callable[[Mapping[str, Any]], PairMethod]
_REGISTRY: dict[str, Builder] = {}
_CLASSES: dict[str, type[PairMethod]] = {}


def register_method(method: type[PairMethod]) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``fn(cfg) -> method`` under ``method.name``.

    Raises:
        ValueError: ``method.name`` is empty or taken.
    """
    name = method.name
    if not name:
        raise ValueError(f"method {method.__name__} has no name (set the class attribute)")
    if name in _REGISTRY:
        raise ValueError(f"a method named {name!r} is registered already")

    def wrap(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        _CLASSES[name] = method
        return fn
    return wrap


def list_methods() -> list[str]:
    """Registered method names."""
    return list(_REGISTRY)


def method_class(name: str) -> type[PairMethod]:
    """The class of method ``name`` (its ``same_image`` and :meth:`~PairMethod.describe`).

    Raises:
        ConfigError: for an unknown name.
    """
    try:
        return _CLASSES[name]
    except KeyError:
        raise ConfigError(_unknown(name)) from None


def _unknown(name: str) -> str:
    return f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}"


def create_method(name: str, cfg: Mapping[str, Any]) -> PairMethod:
    """Build method ``name`` from a resolved pre-training configuration ``cfg``
    (``model.*`` for encoder and head, ``loss.temperature``, ``ssl.*`` for method options).

    Raises:
        ConfigError: for an unknown name.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ConfigError(_unknown(name)) from None
    return builder(cfg)
