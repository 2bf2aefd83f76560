"""The downstream classifier: encoder f -> dropout (p = 0.3, as the paper) -> Linear.

The classes default to ``["benign", "malignant"]`` (BreakHis); any other set (BACH's four
classes) is given in logit order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mpcs.core.vocab import CLASSES
from mpcs.data.transforms import eval_transform
from mpcs.models.encoders import Encoder

#: The default classes, in logit order (BreakHis: malignant is class 1).
CLASS_NAMES: tuple[str, ...] = CLASSES


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


def build_classifier(encoder: Encoder, cfg: Mapping[str, Any],
                     class_names: Sequence[str] = CLASS_NAMES) -> Classifier:
    """The classifier of a fine-tuning configuration (``model.dropout``, ``data.input_size``)."""
    return Classifier(encoder, class_names, dropout=cfg["model"]["dropout"],
                      input_size=cfg["data"]["input_size"])
