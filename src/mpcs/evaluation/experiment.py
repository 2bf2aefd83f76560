"""``mpcs experiment``: the paper's BreakHis grid (Exp-1 ... Exp-8) over patient-level folds.

For every fold of a patient-level split (``OUT/splits.json``):

1. pre-train MPCS with each pair strategy (FP, OP, RP) on that fold's TRAINING patients only
   (``OUT/fold<k>/pretrain-<strategy>``);
2. fine-tune (or linear-evaluate) each pre-trained encoder and the baseline initialisation
   (ImageNet or random) at each magnification and label fraction, selecting on the fold's
   validation part and testing once on its test part
   (``OUT/fold<k>/<method>/<magnification>/lf<fraction>``).

Every finished cell holds ``cell.json`` (written last); ``--resume`` skips those and redoes
an interrupted one. It refuses settings that would change finished cells (those of the grid,
the resolved fine-tuning configuration, each finished pre-training run's). A failed cell is
reported in ``OUT/failures.jsonl`` and does not stop the others. Before anything trains, the
runner refuses a split in which a patient is in two parts of a fold, and a pre-training run
whose images include a validation or test patient. ``OUT`` is locked (``OUT/.lock``, the lock
of every run folder) while the grid runs: a second process on it is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mpcs.config import (
    EXPERIMENT_DEFAULTS,
)
from mpcs.core.errors import ConfigError, DataError
from mpcs.core.io import atomic_write_text, check_output_folder
from mpcs.core.runtime import default_cache_dir
from mpcs.core.tables import csv_text
from mpcs.core.vocab import BASELINE_LABELS, MAGNIFICATIONS, strategy_label
from mpcs.data.cache import load_images
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.splits import Splits, check_splits
from mpcs.engine.finetune import finetune, linear_eval, load_finetuned
from mpcs.engine.pretrain import pretrain
from mpcs.engine.runinfo import LOCK_FILE, check_resumable, lock_folder
from mpcs.evaluation.cells import (
    RESUME_MAY_DIFFER,
    check_finished_pretraining,
    drop_checkpoints,
    load_or_make_splits,
    pretrain_config,
    record_start,
    recorded_cell,
    resolved_finetune_config,
)
from mpcs.evaluation.transfer import run_transfer
from mpcs.metrics import classification_metrics

log = logging.getLogger(__name__)

def cell_dir(out: Path, fold: int, method: str, magnification: str, fraction: float) -> Path:
    return out / f"fold{fold}" / method / magnification / f"lf{fraction:g}"


def _guard_pretraining(run: Path, fold_train: Sequence[str], fold: int) -> None:
    """Refuse pre-training images of anyone but the fold's training patients."""
    used = set((run / "pretrain_patients.txt").read_text().split())
    leaked = sorted(used - set(fold_train))
    if leaked:
        raise DataError(f"fold {fold}: pre-training in {run} used patients outside the fold's "
                        f"training part: {', '.join(leaked[:10])}")


def _pretrain_fold(cfg: Mapping[str, Any], data: Path, out: Path, splits: Splits, fold: int,
                   train_patients: Sequence[str], resume: bool, progress: bool,
                   needed: Callable[[str], bool] = lambda method: True
                   ) -> dict[str, tuple[str, str]]:
    """Pre-train each strategy on the fold's training patients: {method: (checkpoint,
    encoder name)}. On ``resume`` a finished run is kept, and one whose checkpoint was
    removed (``keep_checkpoints``) is redone only if ``needed(method)``, i.e. some cell
    of the fold still needs its encoder."""
    checkpoints: dict[str, tuple[str, str]] = {}
    fold_split = splits.fold(fold)
    held_out = set(fold_split.val) | set(fold_split.test)
    leaked = sorted(set(train_patients) & held_out)
    if leaked:
        raise DataError(f"fold {fold}: refusing to pre-train on validation/test patients: "
                        f"{', '.join(leaked[:10])}")
    for strategy in cfg["methods"]:
        run = out / f"fold{fold}" / f"pretrain-{strategy}"
        pcfg = pretrain_config(cfg, strategy, train_patients)
        done, last = run / "done.json", run / "checkpoints" / "last.pt"
        finished = resume and done.exists()  # its settings were checked before the grid ran
        if finished and not last.exists() and needed(strategy_label(strategy)):
            log.warning("fold %d: %s's pre-training checkpoint was removed (keep_checkpoints="
                        "fold0); pre-training it again for the cells still to run. The new "
                        "encoder equals the removed one only where training is deterministic "
                        "(CPU, same versions)", fold, strategy_label(strategy))
            finished = False
        if not finished:
            log.info("fold %d: pre-training %s", fold, strategy_label(strategy))
            try:
                summary = pretrain(pcfg, data, run, resume=resume, progress=progress)
            except (DataError, ConfigError) as e:  # which fold and run it was, then why
                raise type(e)(f"fold {fold}, pre-training {strategy_label(strategy)} on the "
                              f"fold's {len(train_patients)} training patients: {e}") from None
            atomic_write_text(done, json.dumps(summary, indent=1))
        _guard_pretraining(run, train_patients, fold)
        checkpoints[strategy_label(strategy)] = (str(last), pcfg["model"]["encoder"])
    return checkpoints


def _cache_dir(fcfg: Mapping[str, Any]) -> str | None:
    if not fcfg["data"]["use_cache"]:
        return None
    return str(fcfg["data"]["cache_dir"] or default_cache_dir())


def _select(frame: pd.DataFrame, magnification: str) -> pd.DataFrame:
    return frame if magnification == "all" else frame[frame["magnification"] == magnification]


def _run_cell(cfg: Mapping[str, Any], fcfg: Mapping[str, Any], splits: Splits,
              manifest: pd.DataFrame, fold: int, magnification: str, fraction: float,
              init: str, cell: Path, progress: bool) -> dict[str, Any]:
    train = _select(splits.frame(manifest, fold, "train", fraction=fraction), magnification)
    val = _select(splits.frame(manifest, fold, "val"), magnification)
    test = _select(splits.frame(manifest, fold, "test"), magnification)
    run = linear_eval if cfg["mode"] == "linear" else finetune
    # Only unfinished cells run: what a crash left in the cell is replaced.
    return run(fcfg, train, val, test, cell, init=init, progress=progress, overwrite=True)


def cross_magnification(cell: Path, splits: Splits, manifest: pd.DataFrame, fold: int,
                        train_magnification: str, cache_dir: str | None) -> pd.DataFrame:
    """Test the cell's selected model on the fold's test images of every magnification
    (the paper's supplementary cross-magnification evaluation); writes
    ``cross_magnification.csv`` in the cell."""
    model, _ = load_finetuned(cell / "best.pt")
    test = splits.frame(manifest, fold, "test")
    rows = []
    for mag in MAGNIFICATIONS:
        part = test[test["magnification"] == mag]
        if part.empty:
            continue
        pixels = load_images(part["path"].tolist(), model.input_size, cache_dir=cache_dir,
                             progress=False)
        prob = model.predict_proba(pixels)[:, 1]
        y = (part["label"] == "malignant").astype(int).to_numpy()
        m = classification_metrics(y, prob, part["patient_id"].to_numpy())
        rows.append({"train_magnification": train_magnification, "test_magnification": mag,
                     "ila": m["ila"], "pla": m["pla"], "n_images": m["n_images"]})
    table = pd.DataFrame(rows)
    atomic_write_text(cell / "cross_magnification.csv", csv_text(table))
    return table


def run_experiment(cfg: Mapping[str, Any], data: str | Path, out: str | Path,
                   resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run the grid; returns one row per cell that has test metrics."""
    out, data = Path(out), Path(data)
    check_output_folder(out)
    lock = lock_folder(out)  # one process per experiment folder (as pretrain and finetune)
    try:
        if cfg["dataset"] != "breakhis":  # BACH / BCC: patch-based transfer grid
            return run_transfer(cfg, data, out, resume=resume, progress=progress)
        return _run_grid(cfg, data, out, resume, progress)
    finally:
        lock.close()


def _run_grid(cfg: Mapping[str, Any], data: Path, out: Path, resume: bool,
              progress: bool) -> pd.DataFrame:
    """:func:`run_experiment` of a BreakHis grid in its locked folder ``out``."""
    if any(p.name != LOCK_FILE for p in out.iterdir()) and not resume:
        raise ConfigError(f"{out} already holds an experiment; add --resume to continue it or "
                          "choose another --out")
    if resume:
        check_resumable(out / "config.yaml", cfg, EXPERIMENT_DEFAULTS, RESUME_MAY_DIFFER)
    fcfg = resolved_finetune_config(cfg, out, resume)
    manifest = scan_breakhis(data)
    splits = load_or_make_splits(cfg, manifest, out)
    check_splits(splits, manifest)
    if resume:
        for fold in range(cfg["folds"]):
            for strategy in cfg["methods"]:
                check_finished_pretraining(out / f"fold{fold}" / f"pretrain-{strategy}",
                                           pretrain_config(cfg, strategy,
                                                           splits.fold(fold).train))
    record_start(out, cfg, fcfg, data, resume)
    rows = []
    for fold in range(cfg["folds"]):
        train_patients = splits.fold(fold).train
        inits = {BASELINE_LABELS[cfg["baseline"]]: (cfg["baseline"], fcfg["model"]["encoder"])}

        def needed(method: str, fold: int = fold) -> bool:
            return any(not (cell_dir(out, fold, method, mag, fraction)
                            / "cell.json").exists()
                       for mag in cfg["magnifications"] for fraction in cfg["label_fractions"])

        inits.update(_pretrain_fold(cfg, data, out, splits, fold, train_patients, resume,
                                    progress, needed))
        for method, (init, encoder) in inits.items():
            for mag in cfg["magnifications"]:
                for fraction in cfg["label_fractions"]:
                    cell = cell_dir(out, fold, method, mag, fraction)
                    key = {"fold": fold, "method": method, "magnification": mag,
                           "label_fraction": fraction}
                    if resume and (cell / "cell.json").exists():
                        rows.append({**key, "cell": str(cell), "status": "skipped (done)"})
                        continue
                    with recorded_cell(out, cell, key, rows):
                        _run_cell(cfg, fcfg, splits, manifest, fold, mag, fraction, init,
                                  cell, progress)
                        if cfg["cross_magnification"] and mag != "all":
                            cross_magnification(cell, splits, manifest, fold, mag,
                                                _cache_dir(fcfg))
                        atomic_write_text(cell / "cell.json", json.dumps(
                            {"dataset": cfg["dataset"], "mode": cfg["mode"], "encoder": encoder,
                             "init": init, **key}, indent=1))
        if cfg["keep_checkpoints"] == "fold0" and fold > 0:
            drop_checkpoints(out / f"fold{fold}", fold, rows)
    table = pd.DataFrame(rows)
    atomic_write_text(out / "cells.csv", csv_text(table))
    return table
