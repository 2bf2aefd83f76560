"""The Grad-CAM computation (Selvaraju et al., 2017), with own hooks.

The class activation map of class ``c`` weights the channels of a convolutional feature map
``A`` (``[B, K, h, w]``; which one: :mod:`mpcs.viz.cam_layers`) by the spatial mean of the
gradient of the logit ``y_c`` and keeps the positive part::

    alpha_k = mean_{i,j} d y_c / d A_k[i, j]
    cam     = ReLU(sum_k alpha_k A_k)          # [B, h, w], upsampled to the input size

and is scaled to ``[0, 1]`` per image (:func:`normalise_maps`). No ``grad-cam`` package (it
pulls OpenCV).

Example:
    >>> with GradCAM(model) as cam:  # doctest: +SKIP
    ...     maps, probs = cam(x)            # x: [B, 3, S, S] normalised; maps: [B, S, S]
    >>> cam.layer.describe()  # doctest: +SKIP
    'layer2, 4x4'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.core.errors import ConfigError
from mpcs.viz.cam_layers import MIN_MAP_SIZE, TargetLayer, resolve_target_layer

__all__ = ["GradCAM", "normalise_maps", "resize_map"]

_EPS = 1e-12
_REL_FLAT = 1e-4


class GradCAM:
    """Grad-CAM of ``model`` on ``target_layer`` through forward hooks.

    Args:
        model: maps normalised images ``[B, 3, H, W]`` to logits ``[B, C]``; put in eval mode
            while the maps are computed (and restored afterwards).
        target_layer: the convolutional module to explain, or, for a model with an
            ``encoder`` attribute (the mpcs :class:`Classifier`), a ``layer`` of
            :func:`resolve_target_layer`: ``"auto"`` (default; the deepest stage with a map
            of at least ``min_size`` cells at the model's ``input_size``), ``"last"`` (the
            map the encoder pools) or a module name such as ``"layer3"``. A map of an
            intermediate stage localises at small input sizes but is less class-specific.
        min_size: see :func:`resolve_target_layer`.

    Attributes:
        layer: the :class:`TargetLayer` chosen by name (``None`` when a module was given).
        map_size: ``(h, w)`` of the explained feature map in the last call.

    Use as a context manager (or call :meth:`close`) to remove the hook.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = "auto",
                 min_size: int = MIN_MAP_SIZE) -> None:
        self.layer: TargetLayer | None = None
        if target_layer is None or isinstance(target_layer, str):
            encoder = getattr(model, "encoder", None)
            if encoder is None:
                raise ConfigError("GradCAM needs target_layer (a module) for a model without "
                                  "an encoder")
            size = int(getattr(model, "input_size", 0) or 0) or None
            self.layer = resolve_target_layer(encoder, target_layer or "auto", size, min_size)
            target_layer = self.layer.module
        self.model = model
        self.target_layer = target_layer
        self._activation: Tensor | None = None
        self._gradient: Tensor | None = None
        self.map_size: tuple[int, int] | None = None
        self._hook = target_layer.register_forward_hook(self._save)

    def _save(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if not isinstance(output, Tensor) or output.ndim != 4:
            raise ConfigError(f"Grad-CAM target {type(module).__name__} gives "
                              f"{getattr(output, 'shape', type(output))}, not [B, C, h, w]")
        self._activation = output
        if output.requires_grad:
            output.register_hook(self._save_grad)

    def _save_grad(self, grad: Tensor) -> None:
        self._gradient = grad

    def close(self) -> None:
        """Remove the forward hook."""
        self._hook.remove()

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, x: Tensor, target: int | Sequence[int] | Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Maps ``[B, H, W]`` in ``[0, 1]`` (``H, W`` of ``x``) and class probabilities
        ``[B, C]``.

        Args:
            x: normalised images ``[B, 3, H, W]``.
            target: class index per image (one int for all); default: the predicted class.
        """
        was_training = self.model.training
        self.model.eval()
        self._activation = self._gradient = None
        try:
            with torch.enable_grad():
                x = x.detach().clone().requires_grad_(True)
                logits = self.model(x)
                if logits.ndim != 2:
                    raise ConfigError(f"Grad-CAM needs logits [B, C], got {tuple(logits.shape)}")
                idx = self._targets(target, logits)
                if self._activation is None:
                    raise ConfigError("the Grad-CAM target layer was not used by the forward "
                                      "pass")
                score = logits.gather(1, idx[:, None]).sum()
                self.model.zero_grad(set_to_none=True)
                score.backward()
        finally:
            self.model.train(was_training)
        act, grad = self._activation.detach(), self._gradient
        if grad is None:
            raise ConfigError("no gradient reached the Grad-CAM target layer")
        self.map_size = (int(act.shape[-2]), int(act.shape[-1]))
        weights = grad.float().mean(dim=(2, 3), keepdim=True)          # [B, K, 1, 1]
        cam = F.relu((weights * act.float()).sum(dim=1, keepdim=True))  # [B, 1, h, w]
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cam = normalise_maps(cam[:, 0])
        probs = torch.softmax(logits.detach().float(), dim=1)
        self._activation = self._gradient = None
        return cam, probs

    @staticmethod
    def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
        n, c = logits.shape
        if target is None:
            idx = logits.argmax(dim=1)
        elif isinstance(target, int):
            idx = torch.full((n,), target, dtype=torch.long)
        else:
            idx = torch.as_tensor(target, dtype=torch.long).reshape(-1)
        if idx.numel() != n:
            raise ConfigError(f"Grad-CAM: {idx.numel()} targets for {n} images")
        if (idx < 0).any() or (idx >= c).any():
            raise ConfigError(f"Grad-CAM target class out of range 0..{c - 1}: {idx.tolist()}")
        return idx.to(logits.device)


def normalise_maps(cam: Tensor) -> Tensor:
    """Scale each map of ``[B, H, W]`` to ``[0, 1]`` (min-max).

    A flat map (no positive evidence anywhere, or a 1x1 feature map at a small input size)
    becomes zeros; flat means a spread below ``1e-4`` of the map's largest absolute value,
    so that rounding noise of the upsampling is never stretched into a pattern.
    """
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs())
    varies = (span > _REL_FLAT * scale) & (span > _EPS)
    out = (cam - lo) / span.clamp_min(_EPS)
    return torch.where(varies, out, torch.zeros_like(out)).clamp_(0, 1)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``[h, w]`` map to ``size = (H, W)``."""
    if tuple(cam.shape) == tuple(size):
        return np.asarray(cam, dtype=np.float32)
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()

