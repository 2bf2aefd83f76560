"""Comparing configurations: what differs, and whether a run saved with one may be
continued with another (``--resume``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mpcs.config.load import MISSING, get_dotted


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += differences(va, vb, f"{path}.")
        elif va != vb:
            out.append(f"{path}: {va!r} != {vb!r}")
    return out


def with_defaults(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with the keys it lacks (added to mpcs after it was written) at their defaults."""
    out = dict(cfg)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = with_defaults(out[key], value)
    return out


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any],
                     defaults: Mapping[str, Any], may_differ: Iterable[str]) -> list[str]:
    """Differences (``"key: old != new"``) that forbid continuing a run saved with ``saved``.

    ``saved`` is completed with ``defaults`` first, so that keys added to mpcs since do not
    count; keys that mpcs no longer has (in neither ``current`` nor ``defaults``) do not
    count either. A key in ``may_differ`` is allowed to change; one ending in ``"."`` covers its
    whole section.

    >>> resume_conflicts({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0},
    ...                  {"d": 0}, ["b."])
    []
    >>> resume_conflicts({"a": 1, "gone": 5}, {"a": 2}, {"a": 0}, [])
    ['a: 1 != 2']
    """
    allowed = tuple(may_differ)

    def free(key: str) -> bool:
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in allowed):
            return True
        # a setting mpcs no longer has (saved, absent now and from the defaults)
        return not _has_key(current, key) and not _has_key(defaults, key)

    return [x for x in differences(with_defaults(saved, defaults), current)
            if not free(x.split(":", 1)[0])]


def _has_key(cfg: Mapping[str, Any], dotted: str) -> bool:
    return get_dotted(cfg, dotted, MISSING) is not MISSING
