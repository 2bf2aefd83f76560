"""What the grids of ``mpcs experiment`` share (the BreakHis grid in
:mod:`mpcs.evaluation.experiment`, the BACH/BCC grid in :mod:`mpcs.evaluation.transfer`):
the settings a resume may change, the splits file, the resolved fine-tuning configuration,
the pre-training configuration of a pair strategy, the run records, a failure-tolerant cell
and the removal of checkpoints that ``keep_checkpoints=fold0`` no longer needs.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from mpcs.config import FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS, dump, resolve
from mpcs.core.errors import ConfigError, MpcsError
from mpcs.core.io import atomic_write_text
from mpcs.data.splits import Splits, make_splits
from mpcs.engine.pretrain import RESUME_MAY_DIFFER as PRETRAIN_MAY_DIFFER
from mpcs.engine.runinfo import check_resumable, write_run_info

log = logging.getLogger(__name__)

#: Settings that may change on ``--resume``: they only choose which cells exist. Any other
#: change would leave finished cells made under the old settings beside new ones.
RESUME_MAY_DIFFER = ("name", "description", "methods", "magnifications", "label_fractions",
                     "keep_checkpoints",
                     # compared as the configurations they resolve to (resolved_finetune_config,
                     # and each finished pre-training run's config.yaml), not as text
                     "pretrain_preset", "pretrain_overrides", "finetune_preset",
                     "finetune_overrides")
#: Fine-tuning settings that may change on ``--resume`` (where and how fast, not what).
FINETUNE_RESUME_MAY_DIFFER = ("name", "description", "data.cache_dir", "data.use_cache",
                              "train.device", "train.threads", "train.eval_batch_size")
FINETUNE_CONFIG = "finetune_config.yaml"


def load_or_make_splits(cfg: Mapping[str, Any], table: pd.DataFrame, out: Path,
                        **make: Any) -> Splits:
    """The experiment's ``splits.json``: loaded (checked against ``table``, the grid's folds
    and seed) when ``out`` has one, else made with ``make_splits(table, **make)`` and saved.
    Any label fraction can be drawn from loaded splits (the fractions are nested)."""
    path = out / "splits.json"
    if path.exists():
        splits = Splits.load(path, table)
        if splits.folds != cfg["folds"] or splits.seed != cfg["seed"]:
            raise ConfigError(f"{path} holds {splits.folds} folds with seed {splits.seed}; the "
                              f"experiment asks for {cfg['folds']} folds with seed "
                              f"{cfg['seed']}. Use another --out.")
        return splits
    splits = make_splits(table, folds=cfg["folds"], seed=cfg["seed"],
                         label_fractions=cfg["label_fractions"], **make)
    splits.save(path)
    return splits


def resolved_finetune_config(cfg: Mapping[str, Any], out: Path, resume: bool
                             ) -> dict[str, Any]:
    """The grid's fine-tuning configuration (preset + overrides + seed); on ``resume``
    checked against the saved ``OUT/finetune_config.yaml`` (written by
    :func:`record_start`), so that a changed preset file or override cannot mix with
    finished cells."""
    fcfg = resolve(preset=cfg["finetune_preset"], kind="finetune",
                   overrides=[*cfg["finetune_overrides"], f"seed={cfg['seed']}"])
    if resume:
        check_resumable(out / FINETUNE_CONFIG, fcfg, FINETUNE_DEFAULTS,
                        FINETUNE_RESUME_MAY_DIFFER)
    return fcfg


def record_start(out: Path, cfg: Mapping[str, Any], fcfg: Mapping[str, Any], data: Path,
                 resume: bool) -> None:
    """``config.yaml``, ``run.json`` and ``finetune_config.yaml`` of the grid; called once
    every resume check has passed, so that a refused resume changes nothing."""
    write_run_info(out, cfg, {"data": str(data)}, resume=resume)
    atomic_write_text(out / FINETUNE_CONFIG, dump(fcfg))


def pretrain_config(cfg: Mapping[str, Any], strategy: str,
                    patients: Sequence[str] | None = None) -> dict[str, Any]:
    """The pre-training configuration of one pair strategy of the grid (restricted to
    ``patients`` where given: a fold's training part)."""
    extra = [] if patients is None else [f"data.patients={sorted(patients)}"]
    return resolve(preset=cfg["pretrain_preset"], overrides=[
        *cfg["pretrain_overrides"], f"pairs.strategy={strategy}", f"seed={cfg['seed']}",
        *extra])


def check_finished_pretraining(run: Path, pcfg: Mapping[str, Any]) -> None:
    """A finished pre-training run reused on ``--resume`` must have been made with ``pcfg``."""
    if (run / "done.json").exists():
        check_resumable(run / "config.yaml", pcfg, PRETRAIN_DEFAULTS, PRETRAIN_MAY_DIFFER)


def drop_checkpoints(fold_dir: Path, fold: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """``keep_checkpoints=fold0``: remove the ``best.pt`` of the fold's finished cells and,
    once none of its cells failed, its pre-training checkpoints; metrics, predictions and
    run records stay (``mpcs report`` needs nothing else outside fold 0)."""
    failed = any(r["fold"] == fold and str(r["status"]).startswith("failed") for r in rows)
    files = [p for p in fold_dir.rglob("best.pt")
             if (p.parent / "cell.json").exists()]
    if not failed:
        files += sorted(fold_dir.glob("pretrain-*/checkpoints/*.pt"))
    freed, seen = 0, set()
    for path in files:
        try:
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:  # last.pt and its hard-linked epoch file
                seen.add((stat.st_dev, stat.st_ino))
                freed += stat.st_size
            path.unlink()
        except OSError as exc:
            log.warning("keep_checkpoints=fold0: could not remove %s: %s", path, exc)
    if files:
        log.info("fold %d: removed %d checkpoint file(s), %.0f MB (keep_checkpoints=fold0)%s",
                 fold, len(files), freed / 1e6,
                 "; pre-training checkpoints kept: a cell failed" if failed else "")


def _record_failure(out: Path, record: Mapping[str, Any]) -> None:
    with open(out / "failures.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@contextmanager
def recorded_cell(out: Path, cell: Path, key: Mapping[str, Any],
                  rows: list[dict[str, Any]]) -> Iterator[None]:
    """Run one grid cell's body: appends its ``cells.csv`` row to ``rows`` ("done" with its
    seconds, or "failed: ..."). A failure is logged and recorded in ``out/failures.jsonl``
    and does not stop the grid (it is not re-raised)."""
    t0 = time.perf_counter()
    try:
        yield
    except (MpcsError, RuntimeError, ValueError) as e:
        log.error("cell %s failed: %s", cell, e)
        _record_failure(out, {**key, "error": str(e), "traceback": traceback.format_exc()})
        rows.append({**key, "cell": str(cell), "status": f"failed: {e}"})
        return
    rows.append({**key, "cell": str(cell), "status": "done",
                 "seconds": time.perf_counter() - t0})
