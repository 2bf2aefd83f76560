"""``mpcs embed``: the pooled encoder features of images, one row per image.

The rows are written batch by batch while the next images are decoded
(:func:`mpcs.models.features.run_on_files`), so memory stays flat for any number of images.

Example:
    >>> df = embed("runs/demo/checkpoints/last.pt", "data/new", "emb.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mpcs.api.tables import TableWriter, check_suffix, meta_frame, skipped_note
from mpcs.core.io import check_output_file
from mpcs.data.images import list_images
from mpcs.engine.loading import load_model
from mpcs.models.features import batching, inference_device, run_on_files

__all__ = ["embed"]

PathLike = str | os.PathLike[str]


def embed(checkpoint: PathLike, images: PathLike | Iterable[PathLike], out_path: PathLike,
          batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
          device: str | torch.device = "cpu", workers: int | None = None, amp: str = "off",
          keep_features: bool = True) -> pd.DataFrame:
    """Pooled encoder features of every image, written to ``out_path`` (.parquet or .csv).

    Returns a DataFrame with one row per image kept: ``path``, the BreakHis fields
    (``patient_id, label, subtype, magnification, sequence``; empty when the name does not
    parse) and ``f0..f{D-1}`` (left out with ``keep_features=False``, which keeps memory flat
    for very many images: the file has them). ``df.attrs["skipped"]`` lists the images left
    out with ``skip_bad`` (``df.attrs["skipped_reasons"]`` with the reasons).

    ``workers`` background threads decode the images (None: one per core); ``amp="bf16"``
    runs the encoder under bf16 autocast (on a GPU ``device``).

    Raises:
        ConfigError: an output suffix other than .csv/.parquet, or .parquet without pyarrow.
        CheckpointError: an unusable checkpoint.
        DataError: no images, or an unreadable one (without ``skip_bad``), named.
        OutputError: the folder of ``out_path`` cannot be written (checked before any work).
    """
    out = Path(out_path)
    check_suffix(out, (".parquet", ".csv"))
    check_output_file(out)
    device = inference_device(device)
    batching(batch_size, workers)  # refused before any work
    loaded = load_model(checkpoint)
    files = list_images(images, skip_bad=skip_bad)
    enc = loaded.encoder.to(device).eval()
    columns = [f"f{i}" for i in range(enc.num_features)]
    metas: list[pd.DataFrame] = []
    feats: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    with TableWriter(out) as table:
        for batch in run_on_files(enc, files, loaded.input_size, enc.mean, enc.std, batch_size,
                                  skip_bad, progress, "features", device, workers, amp):
            skipped += batch.skipped
            if not batch.files:
                continue
            meta = meta_frame(batch.files)
            table.write(_rows(meta, batch.outputs, columns))
            metas.append(meta)
            if keep_features:
                feats.append(batch.outputs)
        if not table.started:
            table.write(_rows(meta_frame([]), np.zeros((0, len(columns)), np.float32), columns))
    skipped_note(skipped)
    meta = pd.concat(metas, ignore_index=True) if metas else meta_frame([])
    if keep_features:
        stacked = np.concatenate(feats) if feats else np.zeros((0, len(columns)), np.float32)
        df = _rows(meta, stacked, columns)
    else:
        df = meta
    df.attrs["skipped"] = [p for p, _ in skipped]
    df.attrs["skipped_reasons"] = list(skipped)
    return df


def _rows(meta: pd.DataFrame, feats: np.ndarray, columns: list[str]) -> pd.DataFrame:
    return pd.concat([meta, pd.DataFrame(feats, columns=columns)], axis=1)
