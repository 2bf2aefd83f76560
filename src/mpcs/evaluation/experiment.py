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
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from mpcs.config import (
    EXPERIMENT_DEFAULTS,
    FINETUNE_DEFAULTS,
    PRETRAIN_DEFAULTS,
    dump,
    resolve,
)
from mpcs.core.errors import ConfigError, DataError, MpcsError
from mpcs.core.io import atomic_write_text, check_output_folder
from mpcs.core.runtime import default_cache_dir
from mpcs.core.tables import csv_text
from mpcs.core.vocab import BASELINE_LABELS, MAGNIFICATIONS, strategy_label
from mpcs.data.cache import load_images
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.splits import Splits, check_splits, make_splits
from mpcs.engine.finetune import finetune, linear_eval, load_finetuned
from mpcs.engine.pretrain import pretrain
from mpcs.engine.runinfo import LOCK_FILE, check_resumable, lock_folder, write_run_info
from mpcs.metrics import classification_metrics

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


def cell_dir(out: Path, fold: int, method: str, magnification: str, fraction: float) -> Path:
    return out / f"fold{fold}" / method / magnification / f"lf{fraction:g}"


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
    from mpcs.engine.pretrain import RESUME_MAY_DIFFER as PRETRAIN_MAY_DIFFER

    if (run / "done.json").exists():
        check_resumable(run / "config.yaml", pcfg, PRETRAIN_DEFAULTS, PRETRAIN_MAY_DIFFER)


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
            summary = pretrain(pcfg, data, run, resume=resume, progress=progress)
            atomic_write_text(done, json.dumps(summary, indent=1))
        _guard_pretraining(run, train_patients, fold)
        checkpoints[strategy_label(strategy)] = (str(last), pcfg["model"]["encoder"])
    return checkpoints


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


def run_experiment(cfg: Mapping[str, Any], data: str | Path, out: str | Path,
                   resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run the grid; returns one row per cell that has test metrics."""
    out, data = Path(out), Path(data)
    check_output_folder(out)
    lock = lock_folder(out)  # one process per experiment folder (as pretrain and finetune)
    try:
        if cfg["dataset"] != "breakhis":  # BACH / BCC: patch-based transfer grid
            from mpcs.evaluation.transfer import run_transfer

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
