"""Configuration: defaults, YAML presets shipped in the package, command-line overrides.

The package: :mod:`~mpcs.config.defaults` (every key and its default),
:mod:`~mpcs.config.load` (YAML, presets, files, ``--set``), :mod:`~mpcs.config.validate`
(types, choices, ranges), :mod:`~mpcs.config.resume` (what may change on ``--resume``); this
module resolves a configuration from them.

A configuration is a nested dict. :func:`resolve` starts from :data:`PRETRAIN_DEFAULTS`,
merges a preset (``--preset NAME``, a YAML file in ``mpcs/presets``) or a user file
(``--config FILE.yaml``), then ``--set key.sub=value`` overrides (values parsed as YAML, so
``--set train.epochs=5`` gives an int and ``--set model.head_hidden=[256]`` a list). Unknown
keys, wrong types and impossible values raise :class:`~mpcs.core.errors.ConfigError` before any
work starts.

Two kinds of configuration exist: pre-training (:data:`PRETRAIN_DEFAULTS`, the default) and
fine-tuning / linear evaluation (:data:`FINETUNE_DEFAULTS`). A preset or file that holds
``kind: finetune`` is a fine-tuning configuration; ``resolve(..., kind="finetune")`` asks for
one and refuses a pre-training preset (and vice versa).

Example:
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=2"])
    >>> cfg["train"]["epochs"]
    2
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mpcs.config.defaults import (
    EXPERIMENT_DEFAULTS,
    FINETUNE_DEFAULTS,
    KEEP_CHECKPOINTS,
    KINDS,
    PRETRAIN_DEFAULTS,
)
from mpcs.config.load import (
    check_kind,
    config_kind,
    dump,
    get_dotted,
    load_preset,
    load_yaml,
    merge,
    parse_override,
    preset_names,
    yaml_load,
)
from mpcs.config.resume import differences, resume_conflicts, with_defaults
from mpcs.config.validate import check_experiment, check_finetune, check_pretrain
from mpcs.core.errors import ConfigError

__all__ = ["EXPERIMENT_DEFAULTS", "FINETUNE_DEFAULTS", "KEEP_CHECKPOINTS", "KINDS",
           "PRETRAIN_DEFAULTS", "config_kind", "differences", "dump", "load_preset",
           "load_yaml", "merge", "parse_override", "preset_names", "resolve",
           "resume_conflicts", "validate_experiment", "validate_finetune", "validate_pretrain",
           "with_defaults", "yaml_load", "get_dotted"]


def validate_pretrain(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of a resolved pre-training configuration.

    A fine-tuning or experiment configuration (``kind: finetune|experiment``) is handed to
    :func:`validate_finetune` or :func:`validate_experiment`.
    """
    if cfg.get("kind") == "finetune":
        validate_finetune(cfg)
    elif cfg.get("kind") == "experiment":
        validate_experiment(cfg)
    else:
        check_pretrain(cfg)


def validate_finetune(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of a resolved fine-tuning / linear evaluation configuration."""
    check_finetune(cfg)


def validate_experiment(cfg: Mapping[str, Any]) -> None:
    """Types and values of an experiment grid; the presets it names must exist and resolve
    with its overrides."""
    check_experiment(cfg)
    _check_grid_presets(cfg)


def resolve(preset: str | None = None, config_file: str | Path | None = None,
            overrides: Iterable[str] = (), kind: str | None = None) -> dict[str, Any]:
    """Defaults <- preset or file <- ``key=value`` overrides; validated.

    ``kind`` (``"pretrain"`` or ``"finetune"``) picks the defaults; ``None`` takes the kind
    the preset or file declares (its ``kind`` key; none means pre-training). A preset or file
    that declares another kind than the one asked for is a :class:`ConfigError` (a user file
    without a ``kind`` key takes the kind asked for).
    """
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    if kind is not None:
        check_kind(kind)
    data: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
    elif config_file:
        data = load_yaml(config_file)
    # A shipped preset without a kind key is a pre-training one; a user's file without one
    # takes the kind asked for.
    declared = config_kind(data) if ("kind" in data or preset) else (kind or "pretrain")
    if kind is not None and (preset or config_file) and declared != kind:
        source = f"preset {preset!r}" if preset else f"config file {config_file}"
        others = ", ".join(preset_names(kind))
        raise ConfigError(f"{source} is a {declared} configuration, not a {kind} one"
                          + (f"; {kind} presets: {others}" if others else ""))
    kind = kind or declared
    if kind == "pretrain":
        data = {k: v for k, v in data.items() if k != "kind"}
    defaults = {"pretrain": PRETRAIN_DEFAULTS, "finetune": FINETUNE_DEFAULTS,
                "experiment": EXPERIMENT_DEFAULTS}[kind]
    cfg = copy.deepcopy(defaults)
    if preset:
        cfg = merge(cfg, data)
        cfg["name"] = cfg.get("name") if cfg.get("name") != "custom" else preset
    elif config_file:
        cfg = merge(cfg, data)
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    {"pretrain": validate_pretrain, "finetune": validate_finetune,
     "experiment": validate_experiment}[kind](cfg)
    return cfg



def _check_grid_presets(cfg: Mapping[str, Any]) -> None:
    """The grid's presets with its overrides, as its runs resolve them (one pre-training
    configuration per pair strategy): a bad override stops the grid before any work."""
    for key in ("pretrain_overrides", "finetune_overrides"):
        if not all(isinstance(o, str) for o in cfg[key]):
            raise ConfigError(f"{key} must be a list of key=value texts, got {cfg[key]!r}")
    try:
        for strategy in cfg["methods"] or [None]:
            pairs = [f"pairs.strategy={strategy}"] if strategy else []
            resolve(preset=cfg["pretrain_preset"], kind="pretrain",
                    overrides=[*cfg["pretrain_overrides"], *pairs])
    except ConfigError as e:
        raise ConfigError(f"pretrain_preset/pretrain_overrides: {e}") from None
    try:
        resolve(preset=cfg["finetune_preset"], kind="finetune",
                overrides=cfg["finetune_overrides"])
    except ConfigError as e:
        raise ConfigError(f"finetune_preset/finetune_overrides: {e}") from None
