"""What fine-tuning and linear evaluation share: checks, the run folder, seeding, batches,
the per-epoch log, and the test records written once at the end.

A mode (:mod:`mpcs.engine.finetune`, :mod:`mpcs.engine.linear`) is a function
``train(cfg, prepared, class_names, progress) -> Outcome`` that trains, selects on the
validation part and evaluates the test part once; :func:`run_mode` prepares its locked run
folder, runs it and writes the test records.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from mpcs.config import validate_finetune
from mpcs.core.errors import ConfigError, output_error
from mpcs.core.io import atomic_write_text
from mpcs.core.runtime import select_device
from mpcs.core.tables import csv_text
from mpcs.engine.classifier_io import init_encoder
from mpcs.engine.parts import (
    PART_NAMES,
    Part,
    check_parts,
    class_names_of,
    make_part,
    part_summary,
)
from mpcs.engine.runinfo import (
    START_RECORDS,
    FolderRules,
    check_run_folder,
    open_run_folder,
    write_run_info,
)
from mpcs.engine.scoring import Evaluation, predictions_frame
from mpcs.metrics import image_level_accuracy, patient_level_accuracy
from mpcs.models import Encoder
from mpcs.models.classifier import CLASS_NAMES

log = logging.getLogger(__name__)

#: A fine-tuning run folder: no resume; ``overwrite`` moves the previous run aside until the
#: new one has finished; the feature caches of linear evaluation stay and are reused.
RUN_FOLDER = FolderRules(resumable=False, replaced_until="once the new run has finished",
                         records=START_RECORDS, caches=("features_*.npy",))


class Prepared(NamedTuple):
    """What :func:`prepare` hands the run: run folder, device, parts, encoder, init info."""

    out: Path
    device: torch.device
    parts: list[Part]
    encoder: Encoder
    info: dict[str, Any]


@dataclass
class Outcome:
    """What a mode hands back: the test evaluation of the selected model, the selected
    validation evaluation and epoch, and how many epochs ran."""

    test: Evaluation
    best: Evaluation
    best_epoch: int
    epochs_run: int
    stopped_early: bool


Mode = Callable[[Mapping[str, Any], Prepared, tuple[str, ...], bool], Outcome]


def run_mode(mode: str, train: Mode, cfg: Mapping[str, Any], parts: Sequence[pd.DataFrame],
             out_dir: str | Path, init: str | os.PathLike[str], progress: bool,
             class_names: Sequence[str] | None, overwrite: bool) -> dict[str, Any]:
    """Prepare the run folder of ``mode``, run ``train`` in it, write the test records and
    return the run's summary (see :func:`mpcs.engine.finetune.finetune`)."""
    names = class_names_of(class_names)
    with prepare(cfg, *parts, out_dir, init, mode, names, overwrite) as prepared:
        outcome = train(cfg, prepared, names, progress)
        _, val_p, test_p = prepared.parts
        return _finish(prepared.out, mode, test_p, outcome.test, outcome.best_epoch,
                       outcome.best, outcome.epochs_run, outcome.stopped_early, val_p, names)


@contextmanager
def prepare(cfg: Mapping[str, Any], train: pd.DataFrame, val: pd.DataFrame,
            test: pd.DataFrame, out_dir: str | Path, init: str | os.PathLike[str], mode: str,
            class_names: Sequence[str] = CLASS_NAMES, overwrite: bool = False
            ) -> Iterator[Prepared]:
    """Check everything, then open (lock) the run folder and write its start records; the
    run happens inside. A previous run moved aside by ``overwrite`` is deleted once the new
    one has finished."""
    if cfg.get("kind") != "finetune":
        raise ConfigError("fine-tuning needs a fine-tuning configuration "
                          "(resolve(..., kind='finetune'), e.g. preset finetune-paper)")
    validate_finetune(cfg)
    check_parts(train, val, test, class_names)
    check_run_folder(out_dir, RUN_FOLDER, overwrite=overwrite)
    t = cfg["train"]
    device = select_device(t["device"])
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    parts = [make_part(n, df, class_names)
             for n, df in zip(PART_NAMES, (train, val, test), strict=True)]
    encoder, info = init_encoder(init, cfg)
    with open_run_folder(out_dir, RUN_FOLDER, overwrite=overwrite) as folder:
        out = folder.path
        summary = part_summary(parts)
        write_run_info(out, cfg, {"mode": mode, "device": str(device),
                                  **{k: v for k, v in info.items() if k != "identity"},
                                  "parts": summary})
        atomic_write_text(out / "metrics.jsonl", "")
        for name in ("test_predictions.csv", "val_predictions.csv", "test_metrics.json"):
            (out / name).unlink(missing_ok=True)
        log.info("%s: %s", mode, ", ".join(
            f"{p.name} {len(p)} images / {summary[p.name]['patients']} patients" for p in parts))
        yield Prepared(out, device, parts, encoder, info)
        folder.discard_replaced()


def seed_everything(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch and Python; the run's numpy (batch order) and torch (augmentation)
    generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``order`` into batches; a last batch of one image joins the previous one (a
    single image breaks BatchNorm in train mode on a 1x1 feature map)."""
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    return chunks


# --------------------------------------------------------------------------- per epoch


def _log_epoch(out: Path, record: dict[str, Any]) -> None:
    path = out / "metrics.jsonl"
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise output_error(f"cannot write {path}: {exc.strerror or exc}; the run stopped",
                           exc.strerror) from None


def end_epoch(out: Path, bar: Any, epoch: int, train_loss: float, ev: Evaluation, lr: float,
              t0: float, improved: bool, best_epoch: int, since_best: int,
              patience: int) -> bool:
    """Log the epoch to metrics.jsonl and the progress bar; True when early stopping."""
    _log_epoch(out, {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": ev.loss,
                     "val_ila": ev.ila, "val_pla": ev.pla, "lr": lr,
                     "seconds": time.perf_counter() - t0, "improved": improved})
    bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{ev.loss:.4f}", val_acc=f"{ev.ila:.3f}",
                    best=best_epoch)
    if patience and since_best >= patience:
        log.info("early stop after epoch %d: no better val score for %d epochs", epoch + 1,
                 since_best)
        return True
    return False


# --------------------------------------------------------------------------- test records


def _per_magnification(test: Part, ev: Evaluation, frame: pd.DataFrame) -> dict[str, Any]:
    per_mag = {}
    if "magnification" in test.table.columns:
        for mag, idx in frame.groupby("magnification", sort=False).groups.items():
            idx = np.asarray(list(idx))
            per_mag[str(mag)] = {
                "ila": image_level_accuracy(test.labels[idx], ev.predictions[idx]),
                "pla": patient_level_accuracy(test.labels[idx], ev.predictions[idx],
                                              test.patients[idx]),
                "n_images": len(idx),
                "n_patients": int(len(set(test.patients[idx])))}
    return per_mag


def _finish(out: Path, mode: str, test: Part, ev: Evaluation, best_epoch: int,
            best_val: Evaluation, epochs_run: int, stopped_early: bool,
            val: Part | None = None, class_names: Sequence[str] = CLASS_NAMES
            ) -> dict[str, Any]:
    """Write ``test_predictions.csv``, ``val_predictions.csv`` (selected epoch) and
    ``test_metrics.json``; return the run's summary."""
    frame = predictions_frame(test, ev, class_names)
    atomic_write_text(out / "test_predictions.csv", csv_text(frame))
    if val is not None:
        atomic_write_text(out / "val_predictions.csv",
                          csv_text(predictions_frame(val, best_val, class_names)))
    metrics = {
        "mode": mode, "ila": ev.ila, "pla": ev.pla, "loss": ev.loss, "n_images": len(test),
        "n_patients": int(len(set(test.patients))), "selected_epoch": best_epoch,
        "epochs_run": epochs_run, "stopped_early": stopped_early,
        "val": {"loss": best_val.loss, "ila": best_val.ila, "pla": best_val.pla},
        "per_magnification": _per_magnification(test, ev, frame),
    }
    atomic_write_text(out / "test_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return {
        "mode": mode, "out_dir": str(out), "selected_epoch": best_epoch,
        "epochs_run": epochs_run, "stopped_early": stopped_early,
        "val_loss": best_val.loss, "val_ila": best_val.ila, "val_pla": best_val.pla,
        "test_ila": ev.ila, "test_pla": ev.pla, "test_loss": ev.loss,
        "n_test_images": len(test), "n_test_patients": metrics["n_patients"],
        "checkpoint": str(out / "best.pt"),
        "predictions": str(out / "test_predictions.csv"),
        "metrics": str(out / "metrics.jsonl"),
        "test_metrics": str(out / "test_metrics.json"),
    }
