"""Fine-tuning and linear evaluation of a (pre-trained) encoder for image classification.

Model (:mod:`mpcs.models.classifier`): encoder f -> dropout (p = 0.3, as the paper) ->
Linear(num_features, C). The classes default to ``["benign", "malignant"]`` (BreakHis);
``class_names=`` gives any other set (BACH's four classes), in logit order.

* :func:`finetune` trains every weight (paper, sec. 4.3.2: Adam, lr 2e-5, batch 32, 224x224,
  random crop, flip, affine, rotation, colour jitter) with augmentation parameters drawn per
  image on the cached uint8 pixels.
* :func:`linear_eval` (:mod:`mpcs.engine.linear`) freezes the encoder AND keeps it in eval
  mode, so its BatchNorm statistics never change (the authors left BN in train mode; method
  notes, defect 9). The pooled features of every image are computed once, without
  augmentation, and cached in ``out_dir/features_<part>_<key>.npy`` (the key hashes the
  checkpoint, the image list and the input size); only the dropout + linear head trains, on
  those features.

Both select the model on the VALIDATION part only (val ILA, val loss breaking ties, or the
other way round; ``train.select_by``) with early stopping on it, and evaluate the TEST part
exactly once, after training, with the selected model (the authors' code used the test loader
as the validation loader; defect 2). No patient may be in two parts (:func:`check_parts`).
What both share (parts, run folder, scoring, records) lives in :mod:`mpcs.engine.parts`,
:mod:`mpcs.engine.downstream`, :mod:`mpcs.engine.scoring` and
:mod:`mpcs.engine.classifier_io` (the encoder to start from, ``best.pt``).

One run lives in one folder ``out_dir``:

* ``config.yaml`` and ``run.json``: the resolved configuration, init, parts, versions;
* ``metrics.jsonl``: one line per epoch (train loss, val loss, val ILA, val PLA, lr, seconds);
* ``best.pt``: the selected model and everything inference needs (:func:`load_finetuned`);
* ``test_predictions.csv``: one row per test image (probability of malignant, prediction;
  with other classes than benign/malignant, the probability of the last class and one
  ``prob_<class>`` column per class); ``val_predictions.csv``: the same for the validation
  part, from the selected epoch;
* ``test_metrics.json``: test ILA and PLA (overall and per magnification), selected epoch.

The folder is locked against a second process (``out_dir/.lock``). One that holds a run is
refused unless ``overwrite`` is given; then the old run is moved beside it to
``<out_dir>.replaced-<time>`` and deleted once the new run has finished.

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="finetune-cpu-small")
    >>> ckpt = "runs/pre/checkpoints/last.pt"
    >>> finetune(cfg, train, val, test, "runs/ft", init=ckpt)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mpcs.core.checkpoint import save_checkpoint
from mpcs.core.errors import NonFiniteLossError
from mpcs.core.runtime import autocast_for
from mpcs.data.transforms import FinetuneAugment
from mpcs.engine.classifier_io import (
    CHECKPOINT_KIND,
    classifier_checkpoint,
    init_encoder,
    load_finetuned,
)
from mpcs.engine.downstream import (
    RUN_FOLDER,
    Outcome,
    Prepared,
    batches,
    end_epoch,
    run_mode,
    seed_everything,
)
from mpcs.engine.linear import linear_eval
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.parts import Part, check_parts, load_pixels
from mpcs.engine.scoring import Evaluation, Selection, evaluate, predictions_frame
from mpcs.models.classifier import (
    CLASS_NAMES,
    Classifier,
    ClassifierHead,
    build_classifier,
)

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_KIND", "CLASS_NAMES", "RUN_FOLDER", "Classifier", "ClassifierHead",
           "Evaluation", "build_classifier", "check_parts", "epoch_budget", "finetune",
           "init_encoder", "linear_eval", "load_finetuned", "predictions_frame"]


def finetune(cfg: Mapping[str, Any], train: pd.DataFrame, val: pd.DataFrame,
             test: pd.DataFrame, out_dir: str | Path, init: str | os.PathLike[str],
             progress: bool = True, class_names: Sequence[str] | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune encoder + dropout + linear head on ``train``; select on ``val``; test once.

    Args:
        cfg: a resolved fine-tuning configuration (``resolve(..., kind="finetune")``).
        train, val, test: rows of the BreakHis manifest (``path``, ``patient_id``, ``label``,
            ``magnification``, ...); a label fraction is the caller's subset of ``train``.
        out_dir: run folder (see the module docstring for its files).
        init: ``"imagenet"``, ``"none"`` or a checkpoint path (see :func:`init_encoder`).
        progress: show tqdm progress bars.
        class_names: the classes (``label`` values) in logit order; default benign,
            malignant.
        overwrite: replace a run already in ``out_dir`` (refused otherwise): it is moved
            beside it to ``<out_dir>.replaced-<time>`` and deleted once this run finished.

    Returns:
        Selected epoch, val and test ILA/PLA, test counts and the paths of the outputs.

    Raises:
        ConfigError: an empty part or an invalid configuration. DataError: patient leakage.
        OutputError: ``out_dir`` holds a run, is in use by another process, or cannot be
            written.
    """
    return run_mode("finetune", _finetune, cfg, (train, val, test), out_dir, init, progress,
                    class_names, overwrite)


def epoch_budget(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """Epochs to train: ``epochs``, raised so that at least ``min_steps`` optimiser steps run.

    Small training sets take few steps per epoch (a few hundred images: 7 steps of 32), so a
    budget and a patience counted in epochs stop them after a few dozen steps, before they
    learn; ``train.min_steps`` counts in steps instead (early stopping waits for it too).

    Example:
        >>> epoch_budget(50, 1000, 7), epoch_budget(50, 1000, 40)
        (143, 50)
    """
    needed = -(-min_steps // max(steps_per_epoch, 1))
    if needed > epochs:
        log.info("train.min_steps=%d: %d epochs of %d steps (train.epochs=%d raised)",
                 min_steps, needed, steps_per_epoch, epochs)
    return max(epochs, needed)


def _train_epoch(model: Classifier, part: Part, aug: FinetuneAugment,
                 optimizer: torch.optim.Optimizer, scheduler: Any, order: np.ndarray,
                 gen: torch.Generator, t: Mapping[str, Any], device: torch.device,
                 epoch: int, best_path: Path, progress: bool) -> float:
    """Epoch ``epoch`` (from 0) of fine-tuning in the batch ``order``; the mean training
    loss. A non-finite loss stops the run, naming the best model so far (``best_path``)."""
    model.train()
    loss_sum, seen = 0.0, 0
    steps_bar = tqdm(batches(order, t["batch_size"]), desc=f"epoch {epoch + 1}", unit="step",
                     leave=False, disable=not progress)
    for idx in steps_bar:
        idx = np.sort(idx)
        x = aug(torch.from_numpy(part.inputs[idx]).to(device), gen)
        y = torch.from_numpy(part.labels[idx]).to(device)
        with autocast_for(device, t["amp"]):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at epoch {epoch + 1}; lower optim.lr. "
                f"The best model so far is in {best_path}.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(idx)
        seen += len(idx)
        steps_bar.set_postfix(loss=f"{loss.item():.4f}")
    return loss_sum / max(seen, 1)


def _finetune(cfg: Mapping[str, Any], prepared: Prepared, names: tuple[str, ...],
              progress: bool) -> Outcome:
    """:func:`finetune` in its prepared, locked run folder."""
    out, device, parts, encoder, info = prepared
    train_p, val_p, test_p = parts
    t, size = cfg["train"], cfg["data"]["input_size"]
    for p in parts:
        p.inputs = load_pixels(p, cfg, progress)
    np_rng, gen = seed_everything(int(cfg["seed"]))
    model = build_classifier(encoder, cfg, names).to(device)
    aug = FinetuneAugment(cfg["augment"], size, encoder.mean, encoder.std)
    optimizer = build_optimizer(model, cfg["optim"])
    steps = len(batches(np.arange(len(train_p)), t["batch_size"]))
    epochs = epoch_budget(t["epochs"], t["min_steps"], steps)
    s = cfg["schedule"]
    scheduler = build_scheduler(optimizer, total_steps=steps * epochs,
                                warmup_steps=steps * s["warmup_epochs"], schedule=s["name"],
                                final_lr_fraction=s["final_lr_fraction"])
    eval_kw = {"batch_size": t["eval_batch_size"], "device": device, "amp": t["amp"],
               "input_size": size, "mean": encoder.mean, "std": encoder.std}
    sel = Selection(t["select_by"])
    epoch = 0
    bar = tqdm(range(epochs), desc="finetune", unit="epoch", disable=not progress)
    for epoch in bar:
        t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        train_loss = _train_epoch(model, train_p, aug, optimizer, scheduler,
                                  np_rng.permutation(len(train_p)), gen, t, device, epoch,
                                  out / "best.pt", progress)
        ev = evaluate(model, val_p, **eval_kw)
        improved = sel.offer(ev, epoch + 1, model.state_dict)
        if improved:
            save_checkpoint(classifier_checkpoint(model, cfg, info, "finetune", epoch + 1, ev),
                            out / "best.pt")
        patience = t["patience"] if (epoch + 1) * steps >= t["min_steps"] else 0
        if end_epoch(out, bar, epoch, train_loss, ev, lr, t0, improved, sel.best_epoch,
                     sel.since_best, patience):
            break
    bar.close()
    model.load_state_dict(sel.state)
    test_ev = evaluate(model, test_p, **eval_kw)
    return Outcome(test_ev, sel.best, sel.best_epoch, epoch + 1, epoch + 1 < epochs)
