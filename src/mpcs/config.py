"""Configuration: defaults, YAML presets shipped in the package, command-line overrides.

A configuration is a nested dict. :func:`resolve` starts from :data:`PRETRAIN_DEFAULTS`,
merges a preset (``--preset NAME``, a YAML file in ``mpcs/presets``) or a user file
(``--config FILE.yaml``), then ``--set key.sub=value`` overrides (values parsed as YAML, so
``--set train.epochs=5`` gives an int and ``--set model.head_hidden=[256]`` a list). Unknown
keys, wrong types and impossible values raise :class:`~mpcs.errors.ConfigError` before any
work starts.

Example:
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=2"])
    >>> cfg["train"]["epochs"]
    2
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mpcs.errors import ConfigError


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


PRETRAIN_DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "description": "",
    "seed": 0,
    "data": {
        "input_size": 224,
        "patients": None,        # restrict pre-training to these patient ids (fold training part)
        "cache_dir": None,       # None: $MPCS_CACHE or ~/.cache/mpcs
        "use_cache": True,
    },
    "model": {
        "encoder": "resnet50_dilated",
        "weights": "imagenet",   # imagenet | none | path to a state dict
        "head_hidden": [1024],
        "head_out": 128,
        "channels_last": True,
    },
    "pairs": {"strategy": "ordered"},
    "augment": {
        "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
        "hflip": 0.5, "vflip": 0.5, "rot90": True, "rotation_degrees": 15.0, "translate": 0.05,
    },
    "loss": {"temperature": 0.01},
    "optim": {
        "name": "adam",
        "lr": 1.0e-5,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "lars_eta": 0.001,
        "lr_biases": None,
        "scale_lr_with_batch": False,  # lr * batch_size / 256 (LARS convention)
    },
    "schedule": {"name": "cosine", "warmup_epochs": 0, "final_lr_fraction": 0.0},
    "train": {
        "epochs": 1000,
        "batch_size": 128,
        "drop_last": True,
        "checkpoint_every": 50,
        "device": "auto",        # auto | cpu | cuda | cuda:N
        "amp": "auto",           # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
        "threads": 0,            # torch CPU threads; 0 = torch's default
    },
}

# Keys whose default is None accept these types.
_NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "data.patients": (list,),
    "data.cache_dir": (str,),
    "optim.lr_biases": (float, int),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "pairs.strategy": ("fixed", "ordered", "random", "fp", "op", "rp"),
    "optim.name": ("adam", "adamw", "sgd", "lars"),
    "schedule.name": ("cosine", "constant"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
}


def preset_names() -> list[str]:
    """Names of the presets shipped in ``mpcs/presets``."""
    folder = resources.files("mpcs") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
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


def _check_types(cfg: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> None:
    for key, default in defaults.items():
        path = f"{prefix}{key}"
        value = cfg[key]
        if isinstance(default, dict):
            _check_types(value, default, f"{path}.")
            continue
        if value is None:
            if default is None:
                continue
            raise ConfigError(f"config key {path!r} must not be empty")
        if default is None:
            allowed = _NULLABLE_TYPES.get(path, (object,))
        elif isinstance(default, bool):
            allowed = (bool,)
        elif isinstance(default, float):
            allowed = (float, int)
        else:
            allowed = (type(default),)
        if isinstance(value, bool) and bool not in allowed:
            allowed_ok = False
        else:
            allowed_ok = isinstance(value, allowed)
        if not allowed_ok:
            names = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"config key {path!r} must be {names}, got {value!r}")
        if path in _CHOICES and value not in _CHOICES[path]:
            raise ConfigError(f"config key {path!r} must be one of {', '.join(_CHOICES[path])}, "
                              f"got {value!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_pretrain(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of a resolved pre-training configuration."""
    _check_types(cfg, PRETRAIN_DEFAULTS)
    t, o, s = cfg["train"], cfg["optim"], cfg["schedule"]
    _require(cfg["loss"]["temperature"] > 0,
             f"loss.temperature must be > 0, got {cfg['loss']['temperature']}")
    _require(t["epochs"] >= 1, f"train.epochs must be >= 1, got {t['epochs']}")
    _require(t["batch_size"] >= 2,
             f"train.batch_size must be >= 2 (NT-Xent needs negatives), got {t['batch_size']}")
    _require(t["checkpoint_every"] >= 1,
             f"train.checkpoint_every must be >= 1, got {t['checkpoint_every']}")
    _require(o["lr"] > 0, f"optim.lr must be > 0, got {o['lr']}")
    _require(o["weight_decay"] >= 0, f"optim.weight_decay must be >= 0, got {o['weight_decay']}")
    _require(0 <= s["warmup_epochs"] <= t["epochs"],
             f"schedule.warmup_epochs must be in [0, train.epochs], got {s['warmup_epochs']}")
    _require(0 <= s["final_lr_fraction"] <= 1,
             f"schedule.final_lr_fraction must be in [0, 1], got {s['final_lr_fraction']}")
    _require(cfg["data"]["input_size"] >= 16,
             f"data.input_size must be >= 16, got {cfg['data']['input_size']}")
    _require(cfg["model"]["head_out"] >= 1, "model.head_out must be >= 1")
    _require(all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                 for d in cfg["model"]["head_hidden"]),
             f"model.head_hidden must be a list of positive ints, got "
             f"{cfg['model']['head_hidden']}")
    from mpcs.data.transforms import AugmentConfig

    AugmentConfig(**cfg["augment"]).validate()


def resolve(preset: str | None = None, config_file: str | Path | None = None,
            overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults <- preset or file <- ``key=value`` overrides; validated."""
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    cfg = copy.deepcopy(PRETRAIN_DEFAULTS)
    if preset:
        cfg = merge(cfg, load_preset(preset))
        cfg["name"] = cfg.get("name") if cfg.get("name") != "custom" else preset
    elif config_file:
        cfg = merge(cfg, load_yaml(config_file))
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    validate_pretrain(cfg)
    return cfg


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


def dump(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)
