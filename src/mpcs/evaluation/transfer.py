"""Transfer experiments on BACH (Exp-9..12) and UCSB BCC (Exp-13..15), and their report.

``mpcs experiment`` with ``dataset: bach`` or ``dataset: bcc`` runs this grid:

1. scan the data set (:func:`mpcs.data.bach.scan_bach`, :func:`mpcs.data.bcc.scan_bcc`) and
   make (or reload) ``OUT/splits.json``: ``folds``-fold cross-validation stratified by class
   at IMAGE level (neither set has patient ids), a validation part of
   ``transfer.val_fraction`` of each fold's non-test images, and nested, seeded label
   fractions of the training images (BACH: 5, 10, 20, 40, 60, 80, 100 %);
2. cut every image once into patches (``transfer.patch_size``, ``transfer.patch_stride``;
   optional Reinhard / Macenko stain normalisation fitted on ``transfer.stain_reference``),
   cached as PNG files (:mod:`mpcs.data.patches`);
3. for every fold x initialisation x mode x label fraction, fine-tune or linear-evaluate on
   the training images' patches (:mod:`mpcs.engine.finetune`, selection on the validation
   patches, one test pass), then vote per image (:func:`mpcs.data.patches.majority_vote`),
   with optional test-time flips / rotations (``transfer.tta``), in
   ``OUT/fold<k>/<method>/<mode>/lf<fraction>``.

Initialisations: the baseline (``baseline``: ImageNet or random) and one MPCS encoder
pre-trained on BreakHis per pair strategy in ``methods``, taken from ``transfer.pretrained``
(checkpoint files, pre-training run folders, or a BreakHis ``mpcs experiment`` folder whose
``fold<transfer.pretrain_fold>/pretrain-*`` runs are used) or, failing that, pre-trained here
on ``transfer.pretrain_data`` (a BreakHis folder) with ``pretrain_preset``.

Each finished cell holds ``cell.json`` (written last); ``--resume`` skips those. A failed cell
goes to ``OUT/failures.jsonl`` and the others go on.

``mpcs report OUT`` (:func:`write_transfer_report`) recomputes every metric from the saved
patch and image predictions and writes ``results.csv`` and ``report.md`` with tables in the
layout of the paper's Table 7 (image- and patch-wise accuracy, validation and test), Table 8
(F1 and accuracy over label fractions) and Table 9 (accuracy, precision, recall of
fine-tuning and linear evaluation).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpcs.config import EXPERIMENT_DEFAULTS
from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import ConfigError
from mpcs.core.io import atomic_write_text
from mpcs.core.runtime import default_cache_dir
from mpcs.core.tables import csv_text, read_csv
from mpcs.core.vocab import BASELINE_LABELS, strategy_label
from mpcs.data.cache import load_images
from mpcs.data.datasets import Dataset, patch_datasets
from mpcs.data.patches import PatchSpec, extract_patches, majority_vote
from mpcs.data.splits import check_splits
from mpcs.data.stain import build_normaliser
from mpcs.data.transforms.tta import tta_views
from mpcs.engine.finetune import finetune, linear_eval, load_finetuned
from mpcs.engine.pretrain import pretrain
from mpcs.engine.runinfo import LOCK_FILE, check_resumable
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
from mpcs.metrics import classification_scores

log = logging.getLogger(__name__)

MARKER = "transfer.json"



# --------------------------------------------------------------------------- configuration


def modes_of(cfg: Mapping[str, Any]) -> list[str]:
    """``["finetune", "linear"]`` for ``mode: both``, else ``[mode]``."""
    return ["finetune", "linear"] if cfg["mode"] == "both" else [cfg["mode"]]


def cell_dir(out: Path, fold: int, method: str, mode: str, fraction: float) -> Path:
    return out / f"fold{fold}" / method / mode / f"lf{fraction:g}"


# --------------------------------------------------------------------------- initialisations


def _checkpoints_of(entry: str, fold: int) -> list[Path]:
    """Checkpoint files named by one ``transfer.pretrained`` entry."""
    p = Path(entry).expanduser()
    if p.is_file():
        return [p]
    if (p / "checkpoints" / "last.pt").is_file():
        return [p / "checkpoints" / "last.pt"]
    found = sorted((p / f"fold{fold}").glob("pretrain-*/checkpoints/last.pt"))
    if found:
        return found
    if list((p / f"fold{fold}").glob("pretrain-*/done.json")):
        raise ConfigError(f"transfer.pretrained: the pre-training checkpoints of {p}/fold{fold} "
                          "were removed when the experiment finished (keep_checkpoints=fold0); "
                          "use transfer.pretrain_fold=0, or an experiment run with "
                          "keep_checkpoints=all")
    raise ConfigError(f"transfer.pretrained: {p} is neither a checkpoint, a pre-training run "
                      f"(checkpoints/last.pt) nor an experiment folder with fold{fold}/"
                      "pretrain-*/checkpoints/last.pt")


def _strategy_and_encoder(path: Path) -> tuple[str, str]:
    state = load_checkpoint(path)
    if state.get("kind") != "mpcs-pretrain":
        raise ConfigError(f"transfer.pretrained: {path} is not an mpcs pre-training checkpoint "
                          f"(kind {state.get('kind')!r})")
    cfg = state["config"]
    method = cfg.get("method", "mpcs")
    if method != "mpcs":
        raise ConfigError(f"transfer.pretrained: {path} was pre-trained with method={method}; "
                          "the transfer grid compares MPCS pair strategies (method=mpcs)")
    return strategy_label(cfg["pairs"]["strategy"]), cfg["model"]["encoder"]


def resolve_inits(cfg: Mapping[str, Any], fcfg: Mapping[str, Any], out: Path, resume: bool,
                  progress: bool) -> dict[str, tuple[str, str]]:
    """``{method name: (init, encoder name)}``: the baseline, then one MPCS encoder per
    strategy of ``methods`` (given checkpoints first, else pre-trained on BreakHis here)."""
    t = cfg["transfer"]
    inits = {BASELINE_LABELS[cfg["baseline"]]: (cfg["baseline"], fcfg["model"]["encoder"])}
    given: dict[str, tuple[str, str]] = {}
    for entry in t["pretrained"]:
        for path in _checkpoints_of(entry, t["pretrain_fold"]):
            name, encoder = _strategy_and_encoder(path)
            if name in given and given[name][0] != str(path):
                raise ConfigError(f"transfer.pretrained gives two {name} checkpoints: "
                                  f"{given[name][0]} and {path}")
            given[name] = (str(path), encoder)
    for strategy in cfg["methods"]:
        name = strategy_label(strategy)
        if name in given:
            inits[name] = given[name]
            continue
        if not t["pretrain_data"]:
            raise ConfigError(f"no pre-trained {name} encoder: give its checkpoint in "
                              "transfer.pretrained (or a BreakHis experiment folder), or a "
                              "BreakHis folder in transfer.pretrain_data to pre-train on")
        inits[name] = _pretrain_on_breakhis(cfg, strategy, out, resume, progress)
    return inits


def _pretrain_on_breakhis(cfg: Mapping[str, Any], strategy: str, out: Path, resume: bool,
                          progress: bool) -> tuple[str, str]:
    run = out / f"pretrain-{strategy}"
    pcfg = pretrain_config(cfg, strategy)
    done = run / "done.json"
    if not (resume and done.exists()):  # a finished run's settings were checked at the start
        log.info("pre-training %s on %s", strategy_label(strategy),
                 cfg["transfer"]["pretrain_data"])
        summary = pretrain(pcfg, cfg["transfer"]["pretrain_data"], run, resume=resume,
                           progress=progress)
        atomic_write_text(done, json.dumps(summary, indent=1))
    return str(run / "checkpoints" / "last.pt"), pcfg["model"]["encoder"]


# --------------------------------------------------------------------------- one cell


def _probabilities(preds: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """``[N, C]`` class probabilities of a ``*_predictions.csv`` frame."""
    cols = [f"prob_{c}" for c in classes]
    if all(c in preds.columns for c in cols):
        return preds[cols].to_numpy(dtype=np.float64)
    p = preds["probability"].to_numpy(dtype=np.float64)  # binary: P(positive = last/malignant)
    return np.stack([1.0 - p, p], axis=1)


def tta_probabilities(checkpoint: Path, paths: Sequence[str], kind: str,
                      cache_dir: str | None, batch_size: int = 64) -> np.ndarray:
    """Mean class probabilities ``[N, C]`` of the fine-tuned model over the test-time views."""
    model, _ = load_finetuned(checkpoint)
    pixels = torch.from_numpy(np.array(load_images(list(paths), model.input_size,
                                                   cache_dir=cache_dir, progress=False)))
    views = tta_views(kind)
    total = sum(model.predict_proba(view(pixels).contiguous(), batch_size=batch_size)
                for view in views)
    return total / len(views)


def _finish_part(cell: Path, part: str, frame: pd.DataFrame, ds: Dataset, tta: str,
                 cache_dir: str | None) -> None:
    """Write ``<part>_patches.csv`` and ``<part>_images.csv`` (majority vote) of a cell."""
    preds = read_csv(cell / f"{part}_predictions.csv")
    preds = preds.set_index("path").loc[frame["path"].astype(str)].reset_index()
    probs = (_probabilities(preds, ds.classes) if tta == "none"
             else tta_probabilities(cell / "best.pt", frame["path"].tolist(), tta, cache_dir))
    classes = list(ds.classes)
    patches = pd.DataFrame({"path": frame["path"].to_numpy(),
                            "image_id": frame["image_id"].to_numpy(),
                            "label": frame["label"].to_numpy(),
                            "prediction": [classes[i] for i in probs.argmax(axis=1)],
                            "stain_fallback": frame["stain_fallback"].to_numpy()})
    for i, c in enumerate(classes):
        patches[f"prob_{c}"] = probs[:, i]
    atomic_write_text(cell / f"{part}_patches.csv", csv_text(patches))
    votes = majority_vote(patches["image_id"], probs, classes)
    labels = frame.groupby("image_id", sort=False)["label"].first()
    votes.insert(1, "label", labels.loc[votes["image_id"]].to_numpy())
    atomic_write_text(cell / f"{part}_images.csv", csv_text(votes))


def cell_scores(cell: Path, ds: Dataset) -> dict[str, float]:
    """``<part>_<level>_<metric>`` for val/test, patch/image, the four
    :data:`mpcs.metrics.LABEL_METRICS`, recomputed from a finished cell's ``*_patches.csv``
    and ``*_images.csv``."""
    scores: dict[str, float] = {}
    for part in ("val", "test"):
        for level, name in (("patch", "patches"), ("image", "images")):
            table = read_csv(cell / f"{part}_{name}.csv")
            s = classification_scores(table["label"], table["prediction"], ds.classes,
                                      ds.positive)
            scores.update({f"{part}_{level}_{k}": v for k, v in s.items()})
        scores[f"n_{part}_images"] = int(len(read_csv(cell / f"{part}_images.csv")))
    scores["n_test_patches"] = int(len(read_csv(cell / "test_patches.csv")))
    return scores


# --------------------------------------------------------------------------- the grid


def _patch_table(cfg: Mapping[str, Any], fcfg: Mapping[str, Any], images: pd.DataFrame,
                 out: Path, progress: bool) -> pd.DataFrame:
    t = cfg["transfer"]
    spec = PatchSpec(t["patch_size"], t["patch_stride"] or t["patch_size"])
    normaliser = build_normaliser(t["stain_norm"], t["stain_reference"], t["stain_min_tissue"])
    base = (fcfg["data"]["cache_dir"] or default_cache_dir()) if fcfg["data"]["use_cache"] \
        else out / "patch-cache"
    patches = extract_patches(images, spec, normaliser, cache_dir=base, progress=progress)
    atomic_write_text(out / "patches.json", json.dumps({
        "images": len(images), "patches": len(patches), "patch_size": spec.size,
        "stride": spec.stride, "stain_norm": t["stain_norm"],
        "stain_reference": t["stain_reference"],
        "stain_fallbacks": int(patches.attrs.get("stain_fallbacks", 0)),
        "cache": patches.attrs.get("cache")}, indent=1))
    return patches


def _part_patches(patches: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return patches[patches["image_id"].isin(set(rows["image_id"]))].reset_index(drop=True)


def run_transfer(cfg: Mapping[str, Any], data: str | Path, out: str | Path,
                 resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run the transfer grid (module docstring); one row per cell with its status."""
    out, data = Path(out), Path(data)
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not resume:
        raise ConfigError(f"{out} already holds an experiment; add --resume to continue it or "
                          "choose another --out")
    ds = patch_datasets()[cfg["dataset"]]
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        check_resumable(out / "config.yaml", cfg, EXPERIMENT_DEFAULTS, RESUME_MAY_DIFFER)
        for strategy in cfg["methods"]:
            check_finished_pretraining(out / f"pretrain-{strategy}",
                                       pretrain_config(cfg, strategy))
    fcfg = resolved_finetune_config(cfg, out, resume)
    images = ds.scan(data)
    splits = load_or_make_splits(cfg, images, out,
                                 val_fraction_of_rest=cfg["transfer"]["val_fraction"],
                                 stratify="label", fraction_by_magnification=False)
    check_splits(splits, images)
    record_start(out, cfg, fcfg, data, resume)
    atomic_write_text(out / MARKER, json.dumps({"dataset": ds.name, "classes": list(ds.classes),
                                                "positive": ds.positive}, indent=1))
    patches = _patch_table(cfg, fcfg, images, out, progress)
    inits = resolve_inits(cfg, fcfg, out, resume, progress)
    cache = (str(fcfg["data"]["cache_dir"] or default_cache_dir())
             if fcfg["data"]["use_cache"] else None)
    rows = []
    for fold in range(cfg["folds"]):
        val = _part_patches(patches, splits.frame(images, fold, "val"))
        test = _part_patches(patches, splits.frame(images, fold, "test"))
        for method, (init, encoder) in inits.items():
            for mode in modes_of(cfg):
                for fraction in cfg["label_fractions"]:
                    cell = cell_dir(out, fold, method, mode, fraction)
                    key = {"fold": fold, "method": method, "mode": mode,
                           "label_fraction": fraction}
                    if resume and (cell / "cell.json").exists():
                        rows.append({**key, "cell": str(cell), "status": "skipped (done)"})
                        continue
                    with recorded_cell(out, cell, key, rows):
                        train = _part_patches(patches, splits.frame(images, fold, "train",
                                                                    fraction=fraction))
                        run = linear_eval if mode == "linear" else finetune
                        run(fcfg, train, val, test, cell, init=init, progress=progress,
                            class_names=ds.classes, overwrite=True)  # an unfinished cell
                        for part, frame in (("val", val), ("test", test)):
                            _finish_part(cell, part, frame, ds, cfg["transfer"]["tta"], cache)
                        scores = cell_scores(cell, ds)
                        atomic_write_text(cell / "cell.json", json.dumps(
                            {"dataset": ds.name, "mode": mode, "encoder": encoder, "init": init,
                             "magnification": "-", "tta": cfg["transfer"]["tta"],
                             "n_train_images": int(train["image_id"].nunique()),
                             "n_train_patches": len(train), **key, "scores": scores},
                            indent=1))
        if cfg["keep_checkpoints"] == "fold0" and fold > 0:
            drop_checkpoints(out / f"fold{fold}", fold, rows)
    table = pd.DataFrame(rows)
    atomic_write_text(out / "cells.csv", csv_text(table))
    return table


# --------------------------------------------------------------------------- report
