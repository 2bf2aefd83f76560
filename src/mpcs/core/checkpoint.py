"""THE checkpoint reader and writer: every checkpoint and weights file mpcs reads or writes
goes through here.

* :func:`save_checkpoint` writes a full-state checkpoint atomically (the authors' resume
  restarted at epoch 1 and dropped the optimiser state; method notes, defect 7);
* :func:`load_checkpoint` reads an mpcs checkpoint and :func:`read_weights` any weights file
  (``.safetensors``, or ``torch.load`` with ``weights_only=True``: a pickled object is
  refused in one line of ours, never loaded);
* :func:`checkpoint_kind` tells what a checkpoint holds: :data:`PRETRAIN_KIND` (a
  pre-training run's ``last.pt``/``epoch_XXXX.pt``, also those written before checkpoints
  carried a ``kind``) or :data:`FINETUNE_KIND` (a fine-tuned ``best.pt``). Rebuilding a
  model from one is :mod:`mpcs.engine.restore`'s job.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors

from mpcs.core.errors import CheckpointError, output_error
from mpcs.core.io import atomic_file

#: ``kind`` of a pre-training checkpoint (config, model, optimiser, scheduler, RNG states).
PRETRAIN_KIND = "mpcs-pretrain"
#: ``kind`` of a fine-tuned / linear-evaluation ``best.pt`` (encoder, head, class names).
FINETUNE_KIND = "mpcs-finetune"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``,
    so a crash leaves either the old checkpoint or the new one, never half of one.

    A failed write (disk full, read-only folder) raises :class:`OutputError` (also an
    :class:`OSError`) in one line; the previous file at ``path`` is left as it was. Ctrl-C
    during the write stays a :class:`KeyboardInterrupt` (torch's zip writer, finishing the
    file while the interrupt unwinds, would turn it into a RuntimeError).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as f:
            torch.save(state, f)
    except (RuntimeError, OSError) as exc:  # OSError: also atomic_file's OutputError
        raise _write_failure(path, exc) from None


def _write_failure(path: Path, exc: BaseException) -> BaseException:
    """What a failed ``torch.save`` means: the interrupt or the OS error behind torch's
    "unexpected pos" RuntimeError (raised while that one unwound), or a short write."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        if isinstance(cause, OSError):
            break
        cause = cause.__context__
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause)
    else:
        flat = " ".join(str(exc).split())
        reason = f"the write was cut short, the disk is probably full ({flat})"
    kept = (f"the previous {path.name} is unchanged" if path.exists()
            else "no partial file was left")
    return output_error(f"cannot write checkpoint {path}: {reason}; {kept}", reason)


def checkpoint_epoch(path: str | Path) -> int | None:
    """The ``epoch`` entry of a checkpoint, read without loading its tensors (memory-mapped);
    None when the file is missing or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # noqa: BLE001 - any failure: the epoch is unknown
        return None


def _refusal(path: Path, reason: str, what: str = "mpcs checkpoint") -> CheckpointError:
    """torch's refusal of a pickled object spans many lines and advises
    ``weights_only=False``; say it in one line of our own, without that advice."""
    if "Weights only load failed" in reason or "weights_only" in reason:
        found = re.search(r"GLOBAL ([\w.]+)", reason)
        obj = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"{path}: refused: the file holds a pickled Python object{obj}, not only tensors "
            f"and plain data; mpcs loads checkpoints with weights_only=True and never runs "
            f"code from them")
    flat = " ".join(part.strip() for part in reason.splitlines() if part.strip())
    return CheckpointError(f"{path}: not a readable {what} ({flat})")


def torch_load_safely(path: Path, what: str = "mpcs checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure (a pickled object,
    a damaged file) is one :class:`CheckpointError` line naming ``path`` and, when the file
    is not refused, calling it an unreadable ``what``."""
    try:
        with warnings.catch_warnings():
            # torch's notes on the pickle protocol of a refused file only add noise
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means an unusable file
        raise _refusal(path, str(e), what) from None


def refuse_folder(path: Path) -> None:
    """A folder is not a checkpoint: say so, and name the checkpoint it probably holds.

    Raises:
        CheckpointError: ``path`` is a folder.
    """
    if not path.is_dir():
        return
    inside = [p for p in (path / "best.pt", path / "checkpoints" / "last.pt") if p.is_file()]
    hint = f"; did you mean {inside[0]}?" if inside else (
        "; give a checkpoint file (a run's checkpoints/last.pt or a fine-tuned best.pt)")
    raise CheckpointError(f"{path}: is a folder, not a checkpoint file{hint}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file).

    Raises:
        CheckpointError: a missing file, a folder (naming the checkpoint it holds), a refused
            or unreadable file, or not a dict (one line naming ``path``).
    """
    path = Path(path)
    refuse_folder(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = torch_load_safely(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an mpcs checkpoint (holds {type(state).__name__})")
    return state


def read_weights(path: str | Path, what: str = "weights file") -> Any:
    """Read a weights file on the CPU: ``.safetensors`` (a dict of tensors) or anything
    :func:`torch_load_safely` accepts (pickled code is refused).

    Raises:
        CheckpointError: the file is missing, refused or unreadable (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.suffix.lower() != ".safetensors":
        return torch_load_safely(path, what)
    try:
        return load_safetensors(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - any read failure, reported with the file name
        flat = " ".join(str(error).split())
        raise CheckpointError(f"could not read {what} {path}: {flat}") from None


def checkpoint_kind(state: Mapping[str, Any]) -> str | None:
    """:data:`PRETRAIN_KIND`, :data:`FINETUNE_KIND` or None (not an mpcs model checkpoint).

    A pre-training checkpoint written before checkpoints carried a ``kind`` is recognised
    by its entries (whatever else its ``kind`` says): ``model`` and a ``config`` whose
    ``model`` section has ``head_out``, or ``model``, ``config`` and ``optimizer``.
    """
    kind = state.get("kind")
    if kind in (PRETRAIN_KIND, FINETUNE_KIND):
        return kind
    if "model" in state and isinstance(state.get("config"), Mapping):
        model_cfg = state["config"].get("model")
        if (isinstance(model_cfg, Mapping) and "head_out" in model_cfg) or "optimizer" in state:
            return PRETRAIN_KIND
    return None
