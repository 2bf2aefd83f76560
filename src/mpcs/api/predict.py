"""``mpcs predict``: class probabilities of images from a fine-tuned ``best.pt``, and a
patient-level table when BreakHis names parse.

Rows are written batch by batch while the next images are decoded
(:func:`mpcs.models.features.run_on_files`).

Example:
    >>> pred = predict("runs/ft/best.pt", "data/new", "pred.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mpcs.api.tables import TableWriter, check_suffix, meta_frame, skipped_note
from mpcs.core.checkpoint import FINETUNE_KIND
from mpcs.core.errors import CheckpointError
from mpcs.core.io import atomic_write_text, check_output_file
from mpcs.core.tables import csv_text
from mpcs.data.images import list_images
from mpcs.engine.loading import load_model
from mpcs.models.features import batching, inference_device, run_on_files

__all__ = ["patient_table", "patients_path", "predict"]

PathLike = str | os.PathLike[str]
_NEEDS_FINETUNED = "needs a fine-tuned checkpoint (best.pt from mpcs finetune)"


def patient_table(pred: pd.DataFrame, positive: str = "malignant") -> pd.DataFrame:
    """Patient-level aggregation of image predictions (rows with a patient id only):
    ``patient_id, label, n_images, mean_prob_<positive>, n_<positive>, prediction``.

    The prediction is the majority vote of the image predictions; a tie is broken by the
    mean probability of ``positive`` (>= 0.5 -> ``positive``).
    """
    prob = f"prob_{positive}"
    rows = []
    known = pred[pred["patient_id"].notna() & (pred["patient_id"].astype(str) != "")]
    classes = [c.removeprefix("prob_") for c in pred.columns if c.startswith("prob_")]
    other = next((c for c in classes if c != positive), "benign")
    for pid, g in known.groupby("patient_id", sort=True):
        votes = g["prediction"].value_counts()
        mean_p = float(g[prob].mean())
        top = votes[votes == votes.max()].index.tolist()
        if len(top) == 1:
            vote = str(top[0])
        else:
            vote = positive if mean_p >= 0.5 else other
        labels = sorted(set(g["label"].dropna().astype(str)))
        rows.append({"patient_id": pid, "label": labels[0] if len(labels) == 1 else "",
                     "n_images": len(g), f"mean_{prob}": mean_p,
                     f"n_{positive}": int((g["prediction"] == positive).sum()),
                     "prediction": vote})
    return pd.DataFrame(rows, columns=["patient_id", "label", "n_images", f"mean_{prob}",
                                       f"n_{positive}", "prediction"])


def patients_path(out_csv: PathLike) -> Path:
    """Where :func:`predict` writes the patient table: ``<out>_patients.csv`` beside it."""
    out = Path(out_csv)
    return out.with_name(f"{out.stem}_patients.csv")


def _rows(files: Sequence[Path], probs: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """``path, prob_<class>..., prediction`` and the BreakHis fields of one batch."""
    df = pd.DataFrame({"path": [str(f) for f in files]})
    for i, name in enumerate(names):
        df[f"prob_{name}"] = probs[:, i].astype(np.float64)
    df["prediction"] = [names[i] for i in probs.argmax(axis=1)] if len(probs) else []
    return pd.concat([df, meta_frame(files).drop(columns="path")], axis=1)


def predict(checkpoint: PathLike, images: PathLike | Iterable[PathLike], out_csv: PathLike,
            batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
            device: str | torch.device = "cpu", workers: int | None = None,
            amp: str = "off") -> pd.DataFrame:
    """Class probabilities of every image from a fine-tuned ``best.pt``, written to
    ``out_csv``: ``path, prob_<class>..., prediction`` and the BreakHis fields.

    When BreakHis names parse, a patient-level table is written beside it
    (:func:`patients_path`; see :func:`patient_table`) and kept in
    ``df.attrs["patients"]``. ``df.attrs["skipped"]`` lists the images left out.
    ``workers`` background threads decode the images (None: one per core); ``amp="bf16"``
    runs the model under bf16 autocast (on a GPU ``device``).

    Raises:
        CheckpointError: not a fine-tuned checkpoint ("needs a fine-tuned checkpoint").
        DataError: no images, or an unreadable one (without ``skip_bad``), named.
        OutputError: the folder of ``out_csv`` cannot be written (checked before any work).
    """
    out = Path(out_csv)
    check_suffix(out, (".csv",))
    check_output_file(out)
    device = inference_device(device)
    batching(batch_size, workers)  # refused before any work
    loaded = load_model(checkpoint)
    if loaded.kind != FINETUNE_KIND or loaded.classifier is None:
        raise CheckpointError(f"{checkpoint}: predict {_NEEDS_FINETUNED}; this is a "
                              f"{loaded.kind} checkpoint")
    files = list_images(images, skip_bad=skip_bad)
    clf = loaded.classifier.to(device).eval()
    names = loaded.class_names

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(clf(x).float(), dim=1)

    parts: list[pd.DataFrame] = []
    skipped: list[tuple[str, str]] = []
    with TableWriter(out) as table:
        for batch in run_on_files(fn, files, loaded.input_size, loaded.encoder.mean,
                                  loaded.encoder.std, batch_size, skip_bad, progress,
                                  "predict", device, workers, amp):
            skipped += batch.skipped
            if batch.files:
                parts.append(_rows(batch.files, batch.outputs, names))
                table.write(parts[-1])
        if not parts:
            table.write(_rows([], np.zeros((0, len(names)), np.float32), names))
    skipped_note(skipped)
    df = (pd.concat(parts, ignore_index=True) if parts
          else _rows([], np.zeros((0, len(names)), np.float32), names))
    patients = None
    positive = "malignant" if "malignant" in names else names[-1]
    if df["patient_id"].notna().any():
        patients = patient_table(df, positive)
        atomic_write_text(patients_path(out), csv_text(patients, patients_path(out)))
    df.attrs["patients"] = patients
    df.attrs["skipped"] = [p for p, _ in skipped]
    df.attrs["skipped_reasons"] = list(skipped)
    return df
