"""Full-state checkpoints written atomically (the authors' resume restarted at epoch 1 and
dropped the optimiser state; method notes, defect 7)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from mpcs.engine.runinfo import atomic_file
from mpcs.errors import CheckpointError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``,
    so a crash leaves either the old checkpoint or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        torch.save(state, f)


def _refusal(path: Path, reason: str) -> CheckpointError:
    """torch's refusal of a pickled object spans many lines; say it in one."""
    if "Weights only load failed" in reason:
        found = re.search(r"GLOBAL ([\w.]+)", reason)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"{path}: refused: the file holds a pickled Python object{what}, not only tensors "
            f"and plain data; mpcs loads checkpoints with weights_only=True and never runs "
            f"code from them")
    flat = " ".join(part.strip() for part in reason.splitlines() if part.strip())
    return CheckpointError(f"{path}: not a readable mpcs checkpoint ({flat})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means an unusable file
        raise _refusal(path, str(e)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an mpcs checkpoint (holds {type(state).__name__})")
    return state
