"""Fine-tuning and linear evaluation of a (pre-trained) encoder for image classification.

Model: encoder f -> dropout (p = 0.3, as the paper) -> Linear(num_features, C). The classes
default to ``["benign", "malignant"]`` (BreakHis); ``class_names=`` gives any other set (BACH's
four classes), in logit order.

* :func:`finetune` trains every weight (paper, sec. 4.3.2: Adam, lr 2e-5, batch 32, 224x224,
  random crop, flip, affine, rotation, colour jitter) with augmentation parameters drawn per
  image on the cached uint8 pixels.
* :func:`linear_eval` freezes the encoder AND keeps it in eval mode, so its BatchNorm
  statistics never change (the authors left BN in train mode; method notes, defect 9). The
  pooled features of every image are computed once, without augmentation, and cached in
  ``out_dir/features_<part>_<key>.npy`` (the key hashes the checkpoint, the image list and
  the input size); only the dropout + linear head trains, on those features.

Both select the model on the VALIDATION part only (val ILA, val loss breaking ties, or the
other way round; ``train.select_by``) with early stopping on it, and evaluate the TEST part
exactly once, after training, with the selected model (the authors' code used the test loader
as the validation loader; defect 2). No patient may be in two parts (:func:`check_parts`).

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

import copy
import hashlib
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from mpcs.config import validate_finetune
from mpcs.core.checkpoint import load_checkpoint, save_checkpoint
from mpcs.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    output_error,
)
from mpcs.core.io import atomic_path, atomic_write_text
from mpcs.core.runtime import autocast_for, default_cache_dir, select_device
from mpcs.core.tables import csv_text
from mpcs.data.cache import cache_key, load_images
from mpcs.data.transforms import (
    FinetuneAugment,
    eval_transform,
)
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.pretrain import load_pretrained
from mpcs.engine.runinfo import (
    START_RECORDS,
    FolderRules,
    check_run_folder,
    open_run_folder,
    write_run_info,
)
from mpcs.metrics import image_level_accuracy, patient_level_accuracy
from mpcs.models import Encoder, create_encoder
from mpcs.models.features import extract_features

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("benign", "malignant")
CHECKPOINT_KIND = "mpcs-finetune"
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "patient_id", "label")
PART_NAMES: tuple[str, ...] = ("train", "val", "test")
#: A fine-tuning run folder: no resume; ``overwrite`` moves the previous run aside until the
#: new one has finished; the feature caches of linear evaluation stay and are reused.
RUN_FOLDER = FolderRules(resumable=False, replaced_until="once the new run has finished",
                         records=START_RECORDS, caches=("features_*.npy",))


# --------------------------------------------------------------------------- model


class ClassifierHead(nn.Module):
    """Dropout then a fully connected layer: ``[B, in_features] -> [B, num_classes]``."""

    def __init__(self, in_features: int, num_classes: int = 2, dropout: float = 0.3) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(self.dropout(h))


class Classifier(nn.Module):
    """Encoder f + :class:`ClassifierHead`: ``forward(x) -> logits [B, num_classes]``.

    Attributes:
        class_names: names of the output classes, in logit order.
        input_size: side of the square input the model was trained at.
    """

    def __init__(self, encoder: Encoder, class_names: Sequence[str] = CLASS_NAMES,
                 dropout: float = 0.3, input_size: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ClassifierHead(encoder.num_features, len(class_names), dropout)
        self.class_names = list(class_names)
        self.input_size = int(input_size or encoder.input_size[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    @torch.no_grad()
    def predict_proba(self, pixels: np.ndarray | Tensor, batch_size: int = 64) -> np.ndarray:
        """Class probabilities ``[N, num_classes]`` of uint8 images ``[N, 3, H, W]`` (resized to
        :attr:`input_size` and normalised as in training), in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        try:
            for i in range(0, len(pixels), batch_size):
                x = pixels[i:i + batch_size]
                x = torch.as_tensor(np.array(x) if isinstance(x, np.ndarray) else x)
                x = eval_transform(x.to(device), self.input_size, self.encoder.mean,
                                   self.encoder.std)
                out.append(torch.softmax(self(x).float(), dim=1).cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def _set_channels_last(encoder: Encoder, flag: bool) -> Encoder:
    encoder.channels_last = bool(flag)
    encoder.model.to(memory_format=torch.channels_last if flag else torch.contiguous_format)
    return encoder


def init_encoder(init: str | os.PathLike[str], cfg: Mapping[str, Any]
                 ) -> tuple[Encoder, dict[str, Any]]:
    """The encoder to start from, and a description of where it came from.

    ``init`` is ``"imagenet"``, ``"none"`` (random init from ``cfg["seed"]``), an mpcs
    pre-training checkpoint (its own encoder, whatever ``model.encoder`` says), an mpcs
    fine-tuned checkpoint (its encoder), or a plain encoder state dict for ``model.encoder``.
    """
    name = cfg["model"]["encoder"]
    channels_last = cfg["model"]["channels_last"]
    text = str(init)
    if text.strip().lower() in ("imagenet", "none"):
        kind = text.strip().lower()
        torch.manual_seed(int(cfg["seed"]))
        enc = create_encoder(name, weights=kind)
        info = {"init": kind, "init_kind": kind}
        identity = f"{kind}|{name}|{enc.weights}|timm {timm.__version__}"
        if kind == "none":
            identity += f"|seed {cfg['seed']}|torch {torch.__version__}"
    else:
        path = Path(init).expanduser()
        if not path.is_file():
            raise ConfigError(f"init {text!r} is neither 'imagenet', 'none' nor an existing "
                              "checkpoint file")
        state = load_checkpoint(path) if path.suffix.lower() != ".safetensors" else {}
        if state.get("kind") == CHECKPOINT_KIND:
            enc = load_finetuned(path)[0].encoder
            init_kind = "mpcs-finetune"
        elif state.get("kind") == "mpcs-pretrain" or (
                isinstance(state.get("config"), Mapping) and "model" in state
                and isinstance(state["config"].get("model"), Mapping)
                and "head_out" in state["config"]["model"]):
            enc = load_pretrained(path).encoder
            init_kind = "mpcs-pretrain"
        else:
            enc = create_encoder(name, weights=path)
            init_kind = "state-dict"
        del state
        if enc.name != name:
            log.warning("init %s holds a %s encoder; using it (model.encoder says %s)", path,
                        enc.name, name)
        st = path.stat()
        info = {"init": str(path.resolve()), "init_kind": init_kind}
        identity = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{enc.name}"
    info.update({"encoder": enc.name, "timm_name": enc.timm_name,
                 "num_features": enc.num_features, "identity": identity})
    return _set_channels_last(enc, channels_last), info


def build_classifier(encoder: Encoder, cfg: Mapping[str, Any],
                     class_names: Sequence[str] = CLASS_NAMES) -> Classifier:
    return Classifier(encoder, class_names, dropout=cfg["model"]["dropout"],
                      input_size=cfg["data"]["input_size"])


def _class_names(class_names: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(str(c) for c in (class_names if class_names is not None else CLASS_NAMES))
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"class_names must list at least two distinct classes, got "
                          f"{list(names)}")
    return names


# --------------------------------------------------------------------------- data parts


def check_parts(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Validate the three parts: present, non-empty, known labels, no shared patient.

    Raises:
        ConfigError: a part is missing or empty, or lacks a required column.
        DataError: an unknown label, or a patient in two parts (listed).
    Warns:
        UserWarning: the training part holds a single class.
    """
    parts = {"train": train, "val": val, "test": test}
    for name, df in parts.items():
        if df is None or len(df) == 0:
            raise ConfigError(f"the {name} part is empty: fine-tuning needs images in train, "
                              "val and test (is the label fraction or the split too small?)")
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ConfigError(f"the {name} part lacks the column(s) {', '.join(missing)} "
                              "(expected rows of the BreakHis manifest)")
        unknown = sorted(set(map(str, df["label"])) - set(class_names))
        if unknown:
            raise DataError(f"the {name} part has labels {unknown}; expected one of "
                            f"{list(class_names)}")
    patients = {name: set(map(str, df["patient_id"])) for name, df in parts.items()}
    for a, b in (("test", "train"), ("test", "val"), ("val", "train")):
        shared = sorted(patients[a] & patients[b])
        if shared:
            shown = ", ".join(shared[:20]) + (f" (+{len(shared) - 20} more)"
                                              if len(shared) > 20 else "")
            raise DataError(f"patient leakage: {len(shared)} {a} patient(s) also in the {b} "
                            f"part: {shown}. Every patient must be in exactly one part.")
    classes = sorted(set(map(str, train["label"])))
    if len(classes) < 2:
        msg = (f"the train part holds a single class ({classes[0]}): the classifier cannot "
               "learn to tell the classes apart")
        log.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)


@dataclass
class Part:
    """One part of the data: its table, integer labels, and inputs (pixels or features)."""

    name: str
    table: pd.DataFrame
    labels: np.ndarray
    inputs: np.ndarray | None = None  # uint8 [N, 3, S, S] pixels or float32 [N, F] features

    @property
    def patients(self) -> np.ndarray:
        return self.table["patient_id"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.table)


#: What :func:`_prepare` hands the run: run folder, device, parts, encoder, init info.
Prepared = tuple[Path, torch.device, list[Part], Encoder, dict[str, Any]]


def _make_part(name: str, df: pd.DataFrame,
               class_names: Sequence[str] = CLASS_NAMES) -> Part:
    table = df.reset_index(drop=True).copy()
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array(table["label"].astype(str).map(index), dtype=np.int64)
    return Part(name, table, labels)


def _cache_dir(cfg: Mapping[str, Any]) -> Path | None:
    d = cfg["data"]
    return Path(d["cache_dir"] or default_cache_dir()) if d["use_cache"] else None


def _load_pixels(part: Part, cfg: Mapping[str, Any], progress: bool) -> np.ndarray:
    return load_images(list(part.table["path"].astype(str)), cfg["data"]["input_size"],
                       cache_dir=_cache_dir(cfg), progress=progress)


def _part_summary(parts: Sequence[Part]) -> dict[str, Any]:
    out = {}
    for p in parts:
        counts = p.table["label"].astype(str).value_counts().to_dict()
        out[p.name] = {"images": len(p), "patients": int(p.table["patient_id"].nunique()),
                       "labels": {k: int(v) for k, v in sorted(counts.items())},
                       "patient_ids": sorted(set(p.patients))}
    return out


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Predictions of one pass over a part."""

    part: str
    loss: float
    probabilities: np.ndarray  # [N, num_classes]
    predictions: np.ndarray    # [N] class indices
    ila: float
    pla: float


@torch.no_grad()
def evaluate(model: nn.Module, part: Part, batch_size: int, device: torch.device,
             amp: str = "off", input_size: int | None = None,
             mean: Sequence[float] = (), std: Sequence[float] = ()) -> Evaluation:
    """One pass of ``model`` (eval mode) over ``part``: mean cross-entropy, probabilities, ILA
    and PLA. Pixels (uint8 4-D inputs) are resized to ``input_size`` and normalised with
    ``mean``/``std``; features (2-D inputs) go to the model as they are (a head)."""
    was_training = model.training
    model.eval()
    features = part.inputs.ndim == 2
    logits = []
    try:
        for i in range(0, len(part), batch_size):
            x = torch.from_numpy(np.array(part.inputs[i:i + batch_size])).to(device)
            if features:
                logits.append(model(x.float()).float())
                continue
            x = eval_transform(x, input_size, tuple(mean), tuple(std))
            with autocast_for(device, amp):
                logits.append(model(x).float())
    finally:
        model.train(was_training)
    out = torch.cat(logits)
    y = torch.from_numpy(part.labels).to(out.device)
    loss = float(F.cross_entropy(out, y))
    probs = torch.softmax(out, dim=1).cpu().numpy()
    preds = probs.argmax(axis=1)
    return Evaluation(part.name, loss, probs, preds,
                      image_level_accuracy(part.labels, preds),
                      patient_level_accuracy(part.labels, preds, part.patients))


def _better(ev: Evaluation, best: Evaluation | None, select_by: str) -> bool:
    if best is None:
        return True
    if select_by == "val_loss":
        return ev.loss < best.loss or (ev.loss == best.loss and ev.ila > best.ila)
    return ev.ila > best.ila or (ev.ila == best.ila and ev.loss < best.loss)


# --------------------------------------------------------------------------- shared run logic


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


def _seed_everything(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``order`` into batches; a last batch of one image joins the previous one (a
    single image breaks BatchNorm in train mode on a 1x1 feature map)."""
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    return chunks


@contextmanager
def _prepare(cfg: Mapping[str, Any], train: pd.DataFrame, val: pd.DataFrame,
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
    parts = [_make_part(n, df, class_names)
             for n, df in zip(PART_NAMES, (train, val, test), strict=True)]
    encoder, info = init_encoder(init, cfg)
    with open_run_folder(out_dir, RUN_FOLDER, overwrite=overwrite) as folder:
        out = folder.path
        summary = _part_summary(parts)
        write_run_info(out, cfg, {"mode": mode, "device": str(device),
                                  **{k: v for k, v in info.items() if k != "identity"},
                                  "parts": summary})
        atomic_write_text(out / "metrics.jsonl", "")
        for name in ("test_predictions.csv", "val_predictions.csv", "test_metrics.json"):
            (out / name).unlink(missing_ok=True)
        log.info("%s: %s", mode, ", ".join(
            f"{p.name} {len(p)} images / {summary[p.name]['patients']} patients" for p in parts))
        yield out, device, parts, encoder, info
        folder.discard_replaced()


def _log_epoch(out: Path, record: dict[str, Any]) -> None:
    path = out / "metrics.jsonl"
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise output_error(f"cannot write {path}: {exc.strerror or exc}; the run stopped",
                           exc.strerror) from None


def _end_epoch(out: Path, bar: Any, epoch: int, train_loss: float, ev: Evaluation, lr: float,
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


def _checkpoint(model: Classifier, cfg: Mapping[str, Any], info: Mapping[str, Any],
                mode: str, epoch: int, val: Evaluation) -> dict[str, Any]:
    enc = model.encoder
    return {
        "kind": CHECKPOINT_KIND,
        "mode": mode,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "encoder_name": enc.name,
        "timm_name": enc.timm_name,
        "timm_kwargs": dict(enc.timm_kwargs),
        "num_features": enc.num_features,
        "input_size": model.input_size,
        "mean": list(enc.mean),
        "std": list(enc.std),
        "class_names": list(model.class_names),
        "dropout": float(model.head.dropout.p),
        "epoch": epoch,
        "val": {"loss": val.loss, "ila": val.ila, "pla": val.pla},
        "init": info["init"],
        "init_kind": info["init_kind"],
        "config": copy.deepcopy(dict(cfg)),
    }


def predictions_frame(part: Part, ev: Evaluation, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per image of ``part``: path, patient, magnification, label, probability of
    the positive class (malignant, else the last class), prediction; with other classes
    than benign/malignant also ``prob_<class>`` per class."""
    table = part.table
    mags = (table["magnification"].astype(str) if "magnification" in table.columns
            else pd.Series([""] * len(table)))
    positive = (list(class_names).index("malignant") if "malignant" in class_names
                else len(class_names) - 1)
    frame = pd.DataFrame({
        "path": table["path"].astype(str),
        "patient_id": table["patient_id"].astype(str),
        "magnification": mags,
        "label": table["label"].astype(str),
        "probability": ev.probabilities[:, positive].astype(np.float64),
        "prediction": [class_names[i] for i in ev.predictions],
    })
    if tuple(class_names) != CLASS_NAMES:
        for i, name in enumerate(class_names):
            frame[f"prob_{name}"] = ev.probabilities[:, i].astype(np.float64)
    return frame


def _finish(out: Path, mode: str, test: Part, ev: Evaluation, best_epoch: int,
            best_val: Evaluation, epochs_run: int, stopped_early: bool,
            val: Part | None = None, class_names: Sequence[str] = CLASS_NAMES
            ) -> dict[str, Any]:
    """Write ``test_predictions.csv``, ``val_predictions.csv`` (selected epoch) and
    ``test_metrics.json``; return the run's summary."""
    table = test.table
    frame = predictions_frame(test, ev, class_names)
    atomic_write_text(out / "test_predictions.csv", csv_text(frame))
    if val is not None:
        atomic_write_text(out / "val_predictions.csv",
                          csv_text(predictions_frame(val, best_val, class_names)))
    per_mag = {}
    if "magnification" in table.columns:
        for mag, idx in frame.groupby("magnification", sort=False).groups.items():
            idx = np.asarray(list(idx))
            per_mag[str(mag)] = {
                "ila": image_level_accuracy(test.labels[idx], ev.predictions[idx]),
                "pla": patient_level_accuracy(test.labels[idx], ev.predictions[idx],
                                              test.patients[idx]),
                "n_images": len(idx),
                "n_patients": int(len(set(test.patients[idx])))}
    metrics = {
        "mode": mode,
        "ila": ev.ila,
        "pla": ev.pla,
        "loss": ev.loss,
        "n_images": len(test),
        "n_patients": int(len(set(test.patients))),
        "selected_epoch": best_epoch,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "val": {"loss": best_val.loss, "ila": best_val.ila, "pla": best_val.pla},
        "per_magnification": per_mag,
    }
    atomic_write_text(out / "test_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return {
        "mode": mode,
        "out_dir": str(out),
        "selected_epoch": best_epoch,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "val_loss": best_val.loss,
        "val_ila": best_val.ila,
        "val_pla": best_val.pla,
        "test_ila": ev.ila,
        "test_pla": ev.pla,
        "test_loss": ev.loss,
        "n_test_images": len(test),
        "n_test_patients": metrics["n_patients"],
        "checkpoint": str(out / "best.pt"),
        "predictions": str(out / "test_predictions.csv"),
        "metrics": str(out / "metrics.jsonl"),
        "test_metrics": str(out / "test_metrics.json"),
    }


# --------------------------------------------------------------------------- fine-tuning


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
    names = _class_names(class_names)
    with _prepare(cfg, train, val, test, out_dir, init, "finetune", names,
                  overwrite) as prepared:
        return _finetune(cfg, prepared, names, progress)


def _finetune(cfg: Mapping[str, Any], prepared: Prepared, names: tuple[str, ...],
              progress: bool) -> dict[str, Any]:
    """:func:`finetune` in its prepared, locked run folder."""
    mode = "finetune"
    out, device, parts, encoder, info = prepared
    train_p, val_p, test_p = parts
    t, size = cfg["train"], cfg["data"]["input_size"]
    for p in parts:
        p.inputs = _load_pixels(p, cfg, progress)
    np_rng, gen = _seed_everything(int(cfg["seed"]))
    model = build_classifier(encoder, cfg, names).to(device)
    mean, std = encoder.mean, encoder.std
    aug = FinetuneAugment(cfg["augment"], size, mean, std)
    optimizer = build_optimizer(model, cfg["optim"])
    steps = len(_batches(np.arange(len(train_p)), t["batch_size"]))
    epochs = epoch_budget(t["epochs"], t["min_steps"], steps)
    s = cfg["schedule"]
    scheduler = build_scheduler(optimizer, total_steps=steps * epochs,
                                warmup_steps=steps * s["warmup_epochs"], schedule=s["name"],
                                final_lr_fraction=s["final_lr_fraction"])
    eval_kw = {"batch_size": t["eval_batch_size"], "device": device, "amp": t["amp"],
               "input_size": size, "mean": mean, "std": std}

    best: Evaluation | None = None
    best_state: dict[str, Tensor] | None = None
    best_epoch, since_best, epoch = 0, 0, 0
    bar = tqdm(range(epochs), desc=mode, unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, seen = 0.0, 0
        batches = _batches(np_rng.permutation(len(train_p)), t["batch_size"])
        steps_bar = tqdm(batches, desc=f"epoch {epoch + 1}", unit="step", leave=False,
                         disable=not progress)
        for idx in steps_bar:
            idx = np.sort(idx)
            x = torch.from_numpy(train_p.inputs[idx]).to(device)
            y = torch.from_numpy(train_p.labels[idx]).to(device)
            x = aug(x, gen)
            with autocast_for(device, t["amp"]):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss is {loss.item()} at epoch {epoch + 1}; lower optim.lr. "
                    f"The best model so far is in {out / 'best.pt'}.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            steps_bar.set_postfix(loss=f"{loss.item():.4f}")
        ev = evaluate(model, val_p, **eval_kw)
        improved = _better(ev, best, t["select_by"])
        if improved:
            best, best_epoch, since_best = ev, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            save_checkpoint(_checkpoint(model, cfg, info, mode, best_epoch, best),
                            out / "best.pt")
        else:
            since_best += 1
        patience = t["patience"] if (epoch + 1) * steps >= t["min_steps"] else 0
        if _end_epoch(out, bar, epoch, loss_sum / max(seen, 1), ev, lr, t0, improved,
                      best_epoch, since_best, patience):
            break
    bar.close()
    epochs_run = epoch + 1
    stopped_early = epochs_run < epochs
    model.load_state_dict(best_state)
    test_ev = evaluate(model, test_p, **eval_kw)
    return _finish(out, mode, test_p, test_ev, best_epoch, best, epochs_run, stopped_early,
                   val_p, names)


# --------------------------------------------------------------------------- linear evaluation


def _features(encoder: Encoder, part: Part, cfg: Mapping[str, Any], info: Mapping[str, Any],
              out: Path, device: torch.device, progress: bool) -> np.ndarray:
    """Pooled features of ``part`` (encoder in eval mode, no augmentation), cached in
    ``out/features_<part>_<key>.npy``; the key hashes the checkpoint identity, the image list
    (paths, sizes, modification times) and the input size."""
    size = cfg["data"]["input_size"]
    paths = list(part.table["path"].astype(str))
    key = hashlib.sha1(f"{info['identity']}|{cache_key(paths, size)}|{size}".encode()
                       ).hexdigest()[:20]
    path = out / f"features_{part.name}_{key}.npy"
    if path.is_file():
        try:
            feats = np.load(path)
            if feats.shape == (len(part), encoder.num_features):
                log.info("linear eval: reusing cached %s features %s", part.name, path)
                return feats
        except (OSError, ValueError):
            pass
    pixels = _load_pixels(part, cfg, progress)
    feats = extract_features(encoder, pixels, size, batch_size=cfg["train"]["eval_batch_size"],
                             device=device, channels_last=encoder.channels_last)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, feats)
    return feats


def linear_eval(cfg: Mapping[str, Any], train: pd.DataFrame, val: pd.DataFrame,
                test: pd.DataFrame, out_dir: str | Path, init: str | os.PathLike[str],
                progress: bool = True, class_names: Sequence[str] | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Linear evaluation: frozen encoder in eval mode, dropout + linear head trained with Adam
    (``linear.*`` settings) on cached features; select on ``val``; test once.

    Same arguments, outputs and return value as :func:`finetune`; ``best.pt`` holds the whole
    classifier (the unchanged encoder and the selected head). The cached features
    (``features_*.npy``) stay in place on ``overwrite`` and are reused.
    """
    names = _class_names(class_names)
    with _prepare(cfg, train, val, test, out_dir, init, "linear", names,
                  overwrite) as prepared:
        return _linear_eval(cfg, prepared, names, progress)


def _linear_eval(cfg: Mapping[str, Any], prepared: Prepared, names: tuple[str, ...],
                 progress: bool) -> dict[str, Any]:
    """:func:`linear_eval` in its prepared, locked run folder."""
    mode = "linear"
    out, device, parts, encoder, info = prepared
    train_p, val_p, test_p = parts
    lin, t = cfg["linear"], cfg["train"]
    encoder = encoder.to(device).eval()
    encoder.requires_grad_(False)
    for p in (train_p, val_p):
        p.inputs = _features(encoder, p, cfg, info, out, device, progress)
    np_rng, _ = _seed_everything(int(cfg["seed"]))
    model = build_classifier(encoder, cfg, names).to(device)
    model.encoder.eval()
    head = model.head
    optimizer = build_optimizer(model, {"name": "adam", "lr": lin["lr"],
                                        "weight_decay": lin["weight_decay"]})
    eval_kw = {"batch_size": max(lin["batch_size"], t["eval_batch_size"]), "device": device}
    feats = torch.from_numpy(train_p.inputs).to(device)
    labels = torch.from_numpy(train_p.labels).to(device)

    best: Evaluation | None = None
    best_state: dict[str, Tensor] | None = None
    best_epoch, since_best, epoch = 0, 0, 0
    bar = tqdm(range(lin["epochs"]), desc="linear eval", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        head.train()
        loss_sum = 0.0
        for idx in _batches(np_rng.permutation(len(train_p)), lin["batch_size"]):
            idx_t = torch.from_numpy(np.sort(idx)).to(device)
            loss = F.cross_entropy(head(feats[idx_t]), labels[idx_t])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
        ev = evaluate(head, val_p, **eval_kw)
        improved = _better(ev, best, t["select_by"])
        if improved:
            best, best_epoch, since_best = ev, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        else:
            since_best += 1
        if _end_epoch(out, bar, epoch, loss_sum / len(train_p), ev,
                      optimizer.param_groups[0]["lr"], t0, improved, best_epoch, since_best,
                      lin["patience"]):
            break
    bar.close()
    epochs_run = epoch + 1
    head.load_state_dict(best_state)
    save_checkpoint(_checkpoint(model, cfg, info, mode, best_epoch, best), out / "best.pt")
    # The test part goes through the encoder and the selected head once, after training.
    test_p.inputs = _features(encoder, test_p, cfg, info, out, device, progress)
    test_ev = evaluate(head, test_p, **eval_kw)
    return _finish(out, mode, test_p, test_ev, best_epoch, best, epochs_run,
                   epochs_run < lin["epochs"], val_p, names)


# --------------------------------------------------------------------------- loading


def load_finetuned(path: str | os.PathLike[str]) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the classifier of a ``best.pt`` (no config file needed), in eval mode on the
    CPU. Returns ``(model, meta)``; ``meta`` is the checkpoint without the weights."""
    state = load_checkpoint(path)
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: not an mpcs fine-tuned checkpoint "
                              f"(kind {state.get('kind')!r}, expected {CHECKPOINT_KIND!r})")
    try:
        net = timm.create_model(state["timm_name"], pretrained=False, num_classes=0,
                                **dict(state["timm_kwargs"]))
        size = int(state["input_size"])
        encoder = Encoder(net, name=state["encoder_name"], timm_name=state["timm_name"],
                          timm_kwargs=state["timm_kwargs"], mean=tuple(state["mean"]),
                          std=tuple(state["std"]), input_size=(3, size, size),
                          weights=str(path))
        model = Classifier(encoder, state["class_names"], dropout=float(state["dropout"]),
                           input_size=size)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the fine-tuned model ({e})") from None
    meta = {k: v for k, v in state.items() if k != "model"}
    return model.eval(), meta
