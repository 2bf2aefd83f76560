"""What a pre-training run writes into its folder, and the messages that point at it.

Rank 0 writes the start records (``run.json``, ``pretrain_patients.txt``), one
``metrics.jsonl`` line and the checkpoint(s) at the end of every epoch; a failure names the
last good checkpoint and how to continue.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mpcs.core.checkpoint import checkpoint_epoch, save_checkpoint
from mpcs.core.errors import OutputError, RunInterrupted
from mpcs.core.io import append_line, atomic_write_text
from mpcs.engine.runinfo import RunFolder, write_run_info


def interrupted(run_dir: Path, folder: RunFolder | None) -> RunInterrupted:
    """Ctrl-C: where the run stands and how to continue it (one line for the user)."""
    last = run_dir / "checkpoints" / "last.pt"
    epoch = checkpoint_epoch(last) if last.is_file() else None
    if last.is_file():
        where = f"the last checkpoint is {last}" + (f" (epoch {epoch})" if epoch else "")
        where += "; continue with --resume"
    else:
        where = f"no checkpoint was written yet in {run_dir}; start again with --resume"
    if folder is not None and folder.replaced is not None:
        where += f"; the previous run (--overwrite) is kept in {folder.replaced}"
    return RunInterrupted(where)


def last_good(ckpt_dir: Path, saved_epoch: int) -> str:
    """A sentence naming the last good checkpoint (or that there is none yet)."""
    if saved_epoch:
        return f"The last good checkpoint is {ckpt_dir / 'last.pt'} (epoch {saved_epoch})."
    return "No checkpoint was written yet (this happened in the first epoch of the run)."


def write_start_records(run_dir: Path, cfg: Mapping[str, Any], info: Mapping[str, Any],
                        patients: list[str], resume: bool) -> None:
    """``run.json`` (and ``config.yaml``) and ``pretrain_patients.txt``."""
    try:
        write_run_info(run_dir, cfg, dict(info), resume=resume)
        atomic_write_text(run_dir / "pretrain_patients.txt", "\n".join(sorted(patients)) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {run_dir}: "
                          f"{exc.strerror or exc}") from None


def _save(state: dict[str, Any], path: Path, epoch: int, ckpt_dir: Path,
          saved_epoch: int) -> None:
    try:
        save_checkpoint(state, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write checkpoint {path} at the end of epoch {epoch}: "
            f"{exc.strerror or exc}; the run stopped. {last_good(ckpt_dir, saved_epoch)} "
            f"Free space (or fix the folder), then continue with --resume.") from None


def _save_epoch_file(state: dict[str, Any], ckpt_dir: Path, epoch: int,
                     same_as_last: bool) -> None:
    """``epoch_XXXX.pt``; a hard link to ``last.pt`` when that holds the same state (no
    second write of the same bytes), a file of its own where links are not possible."""
    path = ckpt_dir / f"epoch_{epoch:04d}.pt"
    if same_as_last:
        try:
            path.unlink(missing_ok=True)
            os.link(ckpt_dir / "last.pt", path)
            return
        except OSError:
            pass
    _save(state, path, epoch, ckpt_dir, epoch)


def _append_metrics(record: Mapping[str, Any], metrics_path: Path, ckpt_dir: Path,
                    saved_epoch: int) -> None:
    epoch = record["epoch"]
    try:
        if epoch == 1:  # a new run: replaces the metrics of a run it starts over
            atomic_write_text(metrics_path, json.dumps(record) + "\n")
        else:
            append_line(metrics_path, json.dumps(record))
    except OSError as exc:
        raise OutputError(f"cannot write {metrics_path} at the end of epoch {epoch}: "
                          f"{exc.strerror or exc}; the run stopped. "
                          f"{last_good(ckpt_dir, saved_epoch)} Free space (or fix the "
                          f"folder), then continue with --resume.") from None


def end_of_epoch(record: dict[str, Any], ckpt: dict[str, Any], metrics_path: Path,
                 ckpt_dir: Path, saved_epoch: int, t: Mapping[str, Any],
                 progress: bool) -> None:
    """Rank 0: append the epoch's metrics line and write its checkpoint(s)."""
    epoch = record["epoch"]
    _append_metrics(record, metrics_path, ckpt_dir, saved_epoch)
    if progress:
        tqdm.write(f"epoch {epoch}/{t['epochs']}  loss {record['loss']:.4f}  "
                   f"lr {record['lr']:.2e}  {record['images_per_s']:.0f} img/s"
                   + (f"  ({record['skipped_steps']} steps skipped)"
                      if record["skipped_steps"] else ""))
    last = epoch == t["epochs"]
    wrote_last = epoch % t["last_every"] == 0 or last
    if wrote_last:
        _save(ckpt, ckpt_dir / "last.pt", epoch, ckpt_dir, saved_epoch)
    if epoch % t["checkpoint_every"] == 0 or last:
        _save_epoch_file(ckpt, ckpt_dir, epoch, wrote_last)
