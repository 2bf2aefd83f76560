"""Where and how a run computes: the device, mixed precision, the seeded random sources,
and the folder of the decoded-image cache.

Example:
    >>> select_device("cpu")
    device(type='cpu')
    >>> cache_dir_for({"cache_dir": "/tmp/c", "use_cache": True})
    PosixPath('/tmp/c')
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpcs.core.errors import ConfigError

__all__ = ["autocast_for", "cache_dir_for", "default_cache_dir", "seed_everything",
           "select_device"]


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU) or the named device.

    Raises:
        ConfigError: a CUDA device on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available; use cpu or auto")
    return dev


def autocast_for(device: torch.device, amp: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA by default; on CPU only when asked for explicitly."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch's and Python's global generators with ``seed``; return a numpy generator
    and a torch generator seeded with it (the run's own random sources)."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def default_cache_dir() -> Path:
    """``$MPCS_CACHE`` if set, else ``~/.cache/mpcs``."""
    env = os.environ.get("MPCS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mpcs"


def cache_dir_for(data: Mapping[str, Any]) -> Path | None:
    """The decoded-image cache folder a configuration's ``data`` section asks for:
    ``data.cache_dir`` or :func:`default_cache_dir`, None with ``data.use_cache=false``."""
    if not data.get("use_cache", True):
        return None
    return Path(data["cache_dir"] or default_cache_dir())
