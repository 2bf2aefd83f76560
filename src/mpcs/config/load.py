"""Reading configurations: the YAML dialect, the presets shipped in ``mpcs/presets``, user
files (``--config``) and ``--set key=value`` overrides, merged onto the defaults."""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mpcs.config.defaults import KINDS
from mpcs.core.errors import ConfigError

#: A preset name (a file name in mpcs/presets without .yaml): no folders, no "..".
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` as a string; accept it as the float every user means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$
                  |^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$
                  |^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$
                  |^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def preset_names(kind: str | None = None) -> list[str]:
    """Names of the presets shipped in ``mpcs/presets`` (only those of ``kind`` if given)."""
    folder = resources.files("mpcs") / "presets"
    names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if kind is None:
        return names
    check_kind(kind)
    return [n for n in names if config_kind(load_preset(n)) == kind]


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown configuration kind {kind!r}; use one of {', '.join(KINDS)}")


def config_kind(data: Mapping[str, Any]) -> str:
    """The kind of a preset or config mapping: its ``kind`` key, else ``pretrain``."""
    kind = data.get("kind", "pretrain")
    if kind not in KINDS:
        raise ConfigError(f"config key 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a shipped preset. ``name`` is a plain name as ``mpcs presets`` lists it;
    a path (folders, ``..``, ``.yaml``) is refused: files of settings go through ``--config``."""
    if not _PRESET_NAME.fullmatch(name) or name.lower().endswith((".yaml", ".yml")):
        raise ConfigError(f"preset {name!r} is not a preset name: a preset is a name that "
                          f"`mpcs presets` lists (no folder, no .yaml); give a YAML file of "
                          f"settings with --config FILE.yaml")
    path = resources.files("mpcs") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return yaml_load(path.read_text()) or {}


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping of keys, got {type(data)}")
    return data


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; keys not in ``base`` are errors."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {path!r}{_suggest(key, out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            out[key] = merge(out[key], value, prefix=f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


#: What :func:`get_dotted` returns for a missing key when no default is given.
MISSING: Any = object()


def get_dotted(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``, or ``default`` where a part is missing.

    Example:
        >>> get_dotted({"optim": {"lr": 0.1}}, "optim.lr"), get_dotted({}, "optim.lr", 1)
        (0.1, 1)
    """
    value: Any = cfg
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def dump(cfg: Mapping[str, Any]) -> str:
    """A configuration as the YAML text of a run's ``config.yaml``."""
    return yaml.safe_dump(dict(cfg), sort_keys=False)
