"""Encoder weights from a file: ``model.weights`` as a path to a ``.pth``/``.pt``/
``.safetensors`` state dict (ours, timm's, torchvision's or another library's, wrapped or
prefixed), checked before any data are read and loaded with a clear error when they do not
fit. ImageNet weights by name are :func:`mpcs.models.encoders.create_encoder`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcs.core.checkpoint import read_weights
from mpcs.core.errors import CheckpointError, ConfigError
from mpcs.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")
_ALLOWED_WEIGHTS = "'none', 'imagenet', or a path to a .pth/.pt/.safetensors state dict"


def parse_weights(weights: str | os.PathLike[str]) -> tuple[str, Path | None]:
    """Classify ``weights`` as ``("none"|"imagenet", None)`` or ``("path", Path)``."""
    if isinstance(weights, str) and weights.strip().lower() in ("none", "imagenet"):
        return weights.strip().lower(), None
    if weights is None:
        return "none", None
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(f"weights must be {_ALLOWED_WEIGHTS}; got {weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights {str(weights)!r} is not an existing file; use {_ALLOWED_WEIGHTS}"
        )
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ConfigError(
            f"weights file {path} has an unsupported suffix {path.suffix!r}; "
            f"use {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    return "path", path


_WRAPPER_KEYS = ("encoder", "state_dict", "model", "backbone")
_PREFIXES = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")


def load_encoder_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    default_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load a state dict file into the timm ``model`` (strict except for classifier keys).

    Accepts a plain state dict of the timm model or of an :class:`Encoder`, an mpcs
    checkpoint dict whose ``encoder`` key holds one, and keys prefixed with ``module.``,
    ``encoder.``, ``backbone.`` or ``model.``. Returns the normalisation to use: the file's
    top-level ``mean``/``std`` entries when present, else ``default_norm`` (or ImageNet's).

    Raises:
        CheckpointError: the file is missing, unreadable, or does not fit ``model``.
    """
    path = Path(path)
    raw = read_weights(path)
    state = _normalise_keys(_extract_state_dict(raw, path), set(model.state_dict()))
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=False)
    return _checkpoint_norm(raw, default_norm or (IMAGENET_MEAN, IMAGENET_STD))


def check_weights(weights: str | os.PathLike[str]) -> None:
    """Read the weights file ``weights`` names, if any, and find its state dict, so that a
    refused or unreadable file stops a run before its data are loaded ("none" and
    "imagenet" pass; whether the tensors fit the model is checked when it is built).

    Raises:
        ConfigError: not "none", "imagenet" or an existing file with a known suffix.
        CheckpointError: the file is refused (pickled code) or unreadable, in one line.
    """
    _, path = parse_weights(weights)
    if path is not None:
        _extract_state_dict(read_weights(path), path)


def _extract_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside ``raw`` (directly or under a wrapper key)."""
    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            inner = raw.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                return dict(inner)
        tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(
        f"weights file {path} holds no state dict of tensors "
        f"(expected a state dict or a dict with one of the keys {list(_WRAPPER_KEYS)})"
    )


def _all_tensors(mapping: Mapping[str, Any]) -> bool:
    """True if every value of ``mapping`` is a tensor."""
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def _normalise_keys(state: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes; keep only the encoder part of a whole-model state dict."""
    state = {_strip(k, ("module.", "_orig_mod."), target): v for k, v in state.items()}
    if any(k.startswith(("encoder.", "backbone.")) for k in state):
        state = {k: v for k, v in state.items() if k.startswith(("encoder.", "backbone."))}
    return {_strip(k, _PREFIXES, target): v for k, v in state.items()}


def _strip(key: str, prefixes: tuple[str, ...], target: set[str]) -> str:
    """Remove leading ``prefixes`` from ``key`` until it is a target key or none apply."""
    while key not in target:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix) :]
    return key


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier in ``model``'s architecture (from timm's cfg)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ("fc", "classifier", "head")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise :class:`CheckpointError` listing a few missing/unexpected/mis-shaped keys."""
    target = model.state_dict()
    classifier = _classifier_prefixes(model)
    for key in [k for k in state if k not in target and k.startswith(classifier)]:
        del state[key]
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.startswith(classifier)]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", "")
    raise CheckpointError(
        f"weights file {path} does not fit the encoder {architecture}: {'; '.join(problems)}"
    )


def _checkpoint_norm(
    raw: Any, default: tuple[tuple[float, ...], tuple[float, ...]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Top-level ``mean``/``std`` of an mpcs checkpoint dict, else ``default``."""
    if isinstance(raw, Mapping):
        mean, std = raw.get("mean"), raw.get("std")
        if _is_triplet(mean) and _is_triplet(std):
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return default


def _is_triplet(value: Any) -> bool:
    """True for a length-3 sequence of numbers (a per-channel mean or std)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, (int, float)) for v in value)
    )
