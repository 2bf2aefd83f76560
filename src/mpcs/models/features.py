"""Pooled encoder features of images already decoded into memory: the one feature
extractor of linear evaluation, the kNN monitor, the real-data probe and the report figures.

Example:
    >>> import numpy as np
    >>> from mpcs.models import create_encoder
    >>> enc = create_encoder("resnet18", weights="none")
    >>> extract_features(enc, np.zeros((2, 3, 40, 40), np.uint8), input_size=32).shape
    (2, 512)
"""

from __future__ import annotations

import numpy as np
import torch

from mpcs.data.transforms import eval_transform
from mpcs.models.encoders import Encoder


@torch.no_grad()
def extract_features(encoder: Encoder, pixels: np.ndarray, input_size: int,
                     batch_size: int = 256, device: str | torch.device = "cpu",
                     channels_last: bool = True) -> np.ndarray:
    """Pooled features of uint8 images ``[N, 3, H, W]`` -> float32 ``[N, num_features]``."""
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    try:
        for i in range(0, len(pixels), batch_size):
            x = torch.from_numpy(np.array(pixels[i:i + batch_size])).to(device)
            x = eval_transform(x, input_size, tuple(encoder.mean), tuple(encoder.std))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(encoder(x).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, encoder.num_features), np.float32)
