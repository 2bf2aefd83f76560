"""Scoring a classifier on one part of the data, and choosing the model by validation.

:func:`evaluate` makes one pass (eval mode) over a part: mean cross-entropy, probabilities,
image- and patient-level accuracy. :class:`Selection` keeps the best validation evaluation
(val ILA with val loss breaking ties, or the other way round; ``train.select_by``) and counts
the epochs since for early stopping. :func:`predictions_frame` is one row per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.core.runtime import autocast_for
from mpcs.data.transforms import eval_transform
from mpcs.engine.parts import Part
from mpcs.metrics import image_level_accuracy, patient_level_accuracy
from mpcs.models.classifier import CLASS_NAMES


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


def better(ev: Evaluation, best: Evaluation | None, select_by: str) -> bool:
    """True when ``ev`` is a better validation result than ``best`` by ``select_by``."""
    if best is None:
        return True
    if select_by == "val_loss":
        return ev.loss < best.loss or (ev.loss == best.loss and ev.ila > best.ila)
    return ev.ila > best.ila or (ev.ila == best.ila and ev.loss < best.loss)


@dataclass
class Selection:
    """The best validation evaluation so far, its epoch and weights, and the epochs since."""

    select_by: str
    best: Evaluation | None = None
    best_epoch: int = 0
    since_best: int = 0
    state: dict[str, Tensor] | None = None

    def offer(self, ev: Evaluation, epoch: int, weights: Callable[[], dict[str, Tensor]]
              ) -> bool:
        """Keep ``ev`` of ``epoch`` (and a CPU copy of ``weights()``) if it is better; True
        then."""
        if not better(ev, self.best, self.select_by):
            self.since_best += 1
            return False
        self.best, self.best_epoch, self.since_best = ev, epoch, 0
        self.state = {k: v.detach().cpu().clone() for k, v in weights().items()}
        return True


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
