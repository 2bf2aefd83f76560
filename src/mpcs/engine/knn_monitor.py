"""Online kNN accuracy during pre-training: how well the encoder's features separate benign
from malignant on held-out patients, every k epochs, without training anything on labels.

The reference bank is the pre-training patients' images with their labels; the queries are
the held-out (validation) patients' images. Each query takes the weighted vote of its k
nearest references by cosine similarity, weights ``exp(s / T)`` (Wu et al., CVPR 2018, as
used by DINO and lightly's kNN monitor). Labels are read only here, never by the training
step. Results go to ``metrics.jsonl`` (``knn_acc``: image level, ``knn_pla``: patient level)
and :func:`mpcs.viz.curves.plot_metrics` (``mpcs plot-metrics``) draws them with the loss.
Features come from :func:`mpcs.models.features.extract_features` (the decoded-image cache,
channels-last, inference mode).

Example:
    >>> pred = knn_predict(torch.eye(4), torch.tensor([0, 0, 1, 1]), torch.eye(4)[:1], k=1)
    >>> pred.tolist()
    [0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.runtime import default_cache_dir
from mpcs.data.cache import load_images
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.metrics import image_level_accuracy, patient_level_accuracy
from mpcs.models.encoders import Encoder
from mpcs.models.features import extract_features


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None) -> Tensor:
    """Weighted kNN labels of ``queries`` [Q, D] from ``bank`` [R, D] with labels [R]
    (ints 0..C-1): cosine similarity, top ``min(k, R)``, votes ``exp(s / temperature)``."""
    if bank.shape[0] == 0:
        raise ValueError("kNN needs a non-empty reference bank")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, T={temperature}")
    c = int(num_classes or int(bank_labels.max()) + 1)
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T  # [Q, R]
    top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], c, dtype=torch.float64)
    votes.scatter_add_(1, bank_labels[idx].long(), torch.exp(top.double() / temperature))
    return votes.argmax(dim=1)


class KnnMonitor:
    """Labelled reference and query images, evaluated on an encoder's pooled features.

    Args:
        reference: uint8 images ``[R, 3, H, W]`` of the pre-training patients.
        reference_labels: ints ``[R]``.
        query: uint8 images ``[Q, 3, H, W]`` of held-out patients.
        query_labels: ints ``[Q]``; query_patients: patient id per query image.
        input_size: network input side; k, temperature: kNN settings.
    """

    def __init__(self, reference: np.ndarray, reference_labels: Sequence[int], query: np.ndarray,
                 query_labels: Sequence[int], query_patients: Sequence[str], input_size: int,
                 k: int = 20, temperature: float = 0.07, channels_last: bool = True) -> None:
        if len(reference) == 0 or len(query) == 0:
            raise DataError(f"kNN monitor: {len(reference)} reference and {len(query)} query "
                            f"images; both must be non-empty")
        self.reference, self.query = reference, query
        self.reference_labels = torch.tensor(np.asarray(reference_labels, dtype=np.int64))
        self.query_labels = np.asarray(query_labels)
        self.query_patients = np.asarray(query_patients)
        self.input_size, self.k, self.temperature = input_size, k, temperature
        self.channels_last = channels_last

    def evaluate(self, encoder: Encoder, device: str | torch.device = "cpu") -> dict[str, float]:
        """``{"knn_acc": image-level accuracy, "knn_pla": patient-level accuracy}``; the
        encoder is used in eval mode and returned to its previous mode."""
        kw: dict[str, Any] = {"device": device, "channels_last": self.channels_last}
        bank = torch.from_numpy(extract_features(encoder, self.reference, self.input_size, **kw))
        feats = torch.from_numpy(extract_features(encoder, self.query, self.input_size, **kw))
        pred = knn_predict(bank, self.reference_labels, feats, self.k, self.temperature,
                           num_classes=2).numpy()
        return {"knn_acc": image_level_accuracy(self.query_labels, pred),
                "knn_pla": patient_level_accuracy(self.query_labels, pred, self.query_patients)}


def breakhis_monitor(data_dir: str | Path, train_patients: Sequence[str] | None,
                     val_patients: Sequence[str], input_size: int, cache_dir: str | Path | None,
                     magnification: str = "all", k: int = 20, temperature: float = 0.07,
                     channels_last: bool = True, progress: bool = False) -> KnnMonitor:
    """A monitor on a BreakHis-layout folder: references from ``train_patients`` (all other
    patients when None), queries from ``val_patients``; labels benign 0 / malignant 1.

    Raises:
        ConfigError: a validation patient is also a pre-training patient, or is unknown.
    """
    manifest = scan_breakhis(data_dir)
    if magnification != "all":
        manifest = manifest[manifest["magnification"] == magnification]
    known = set(manifest["patient_id"])
    val = set(map(str, val_patients))
    unknown = sorted(val - known)
    if unknown:
        raise ConfigError(f"monitor.val_patients not in {data_dir}: {', '.join(unknown[:5])}")
    train = known - val if train_patients is None else set(map(str, train_patients))
    both = sorted(train & val)
    if both:
        raise ConfigError(f"monitor.val_patients overlap the pre-training patients "
                          f"({', '.join(both[:5])}); the monitor must use held-out patients")
    ref = manifest[manifest["patient_id"].isin(train)]
    qry = manifest[manifest["patient_id"].isin(val)]
    pixels = load_images([*ref["path"], *qry["path"]], input_size, cache_dir=cache_dir,
                         progress=progress)
    y = (pd.concat([ref, qry])["label"] == "malignant").astype(int).to_numpy()
    n = len(ref)
    return KnnMonitor(pixels[:n], y[:n], pixels[n:], y[n:], qry["patient_id"].to_numpy(),
                      input_size, k, temperature, channels_last)


def build_monitor(cfg: Mapping[str, Any], data_dir: str | Path, progress: bool = False
                  ) -> KnnMonitor | None:
    """The monitor a pre-training configuration asks for (``monitor.knn_every > 0``), or None.

    Raises:
        ConfigError: the monitor is on but ``monitor.val_patients`` is not set, or the source
            has no labels (only BreakHis-layout folders carry them).
    """
    mon, d = cfg["monitor"], cfg["data"]
    if not mon["knn_every"]:
        return None
    if "breakhis" not in (d["source"] if isinstance(d["source"], list) else [d["source"]]):
        raise ConfigError(f"monitor.knn_every needs labelled BreakHis-layout data; "
                          f"data.source={d['source']} has no labels (set monitor.knn_every=0)")
    if not mon["val_patients"]:
        raise ConfigError("monitor.knn_every > 0 needs monitor.val_patients (held-out patients "
                          "to score; `mpcs pretrain --splits FILE --fold K` sets them to the "
                          "fold's validation patients)")
    if not d["patients"]:
        raise ConfigError("monitor.val_patients needs data.patients (the pre-training "
                          "patients): without it pre-training would use every patient, the "
                          "monitor's held-out ones included (`mpcs pretrain --splits FILE "
                          "--fold K` sets both)")
    cache_dir = (d["cache_dir"] or default_cache_dir()) if d["use_cache"] else None
    return breakhis_monitor(data_dir, d["patients"], mon["val_patients"], d["input_size"],
                            cache_dir, mon["knn_magnification"], mon["knn_k"],
                            mon["knn_temperature"], cfg["model"]["channels_last"], progress)
