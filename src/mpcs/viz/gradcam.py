"""Grad-CAM (Selvaraju et al., 2017) of fine-tuned classifiers, with own hooks.

The class activation map of class ``c`` weights the channels of the last convolutional
feature map ``A`` (``[B, K, h, w]``) by the spatial mean of the gradient of the logit ``y_c``
and keeps the positive part::

    alpha_k = mean_{i,j} d y_c / d A_k[i, j]
    cam     = ReLU(sum_k alpha_k A_k)          # [B, h, w], upsampled to the input size

and is scaled to ``[0, 1]`` per image. By default the feature map is the one the encoder
pools (``timm``'s ``forward_features`` output: ``layer4`` of a (dilated) ResNet, ``conv_head``
+ ``bn2`` of an EfficientNet / EfficientNet-Lite) whenever that map is at least 4x4 cells at
the model's input size; below that (``layer4`` of a ResNet is 1x1 at 32 px, which gives a
flat map) ``layer="auto"`` takes the deepest stage that is (``layer2``/``layer3`` of a ResNet,
a ``blocks`` stage of an EfficientNet). Such an intermediate map localises but is less
class-specific (lower-level channels, gradients through the later stages), so every title
names the layer when it is not the last stage (e.g. ``layer2, 8x8``). ``layer="last"`` always
takes the pooled map; a module name (``"layer3"``) takes that module.
:func:`resolve_target_layer` makes the choice for any timm backbone. No ``grad-cam`` package
(it pulls OpenCV).

On files, :func:`gradcam_images` writes one PNG per image (the input and the overlays for
the predicted class and, when the BreakHis name gives it, the true class; one row per
checkpoint) and, for two or more checkpoints, a grid as the paper's Fig. 5 (rows images,
columns the input and one overlay per checkpoint, titled with the checkpoint's label and its
predicted probability).

Example:
    >>> model, _ = load_finetuned("runs/ft/best.pt")  # doctest: +SKIP
    >>> with GradCAM(model) as cam:  # doctest: +SKIP
    ...     maps, probs = cam(x)            # x: [B, 3, S, S] normalised; maps: [B, S, S]
    >>> cam.layer.describe()  # doctest: +SKIP
    'layer2, 4x4'
    >>> gradcam_images(["imagenet/best.pt", "op/best.pt"], "imgs/", "cams/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcs.core.errors import CheckpointError, ConfigError, DataError
from mpcs.core.io import atomic_path

__all__ = [
    "CLASS_MODES",
    "CamImage",
    "GradCAM",
    "LAYER_MODES",
    "TargetLayer",
    "checkpoint_label",
    "explain",
    "find_target_layer",
    "gradcam_images",
    "overlay",
    "resolve_target_layer",
]

log = logging.getLogger(__name__)

#: ``--class`` values besides a class name.
CLASS_MODES: tuple[str, ...] = ("predicted", "true")
_EPS = 1e-12
_REL_FLAT = 1e-4
_INIT_LABELS = {"imagenet": "ImageNet", "none": "Random init"}


# --------------------------------------------------------------------------- the map


#: ``layer`` values of :func:`find_target_layer` besides a module name.
LAYER_MODES: tuple[str, ...] = ("auto", "last")
#: Default smallest shorter side (cells) of the map that ``layer="auto"`` accepts.
MIN_MAP_SIZE = 4


@dataclass(frozen=True)
class TargetLayer:
    """The module Grad-CAM explains, as chosen by :func:`resolve_target_layer`.

    Attributes:
        name: its name inside the timm model (``layer3``, ``blocks.4``, ``bn2``).
        module: the module itself.
        map_size: ``(h, w)`` of its output at ``input_size``.
        input_size: ``(H, W)`` of the probe input (the model's input size).
        is_last: whether it is the map the encoder pools (the last stage).
        last_size: ``(h, w)`` of that last map at ``input_size``.
    """

    name: str
    module: nn.Module
    map_size: tuple[int, int]
    input_size: tuple[int, int]
    is_last: bool
    last_size: tuple[int, int]

    def describe(self) -> str:
        """``"layer2, 8x8"``: the layer and its map size."""
        return f"{self.name}, {self.map_size[0]}x{self.map_size[1]}"


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    s = [int(v) for v in size]
    return (s[-2], s[-1]) if len(s) >= 2 else (s[0], s[0])


def _stage_names(net: nn.Module, modules: dict[str, nn.Module]) -> list[str]:
    """Candidate stages of ``net``, shallow to deep: ``layer1..layerN`` of a ResNet, the
    ``blocks`` stages of an EfficientNet, else timm's ``feature_info`` modules (stride >= 4)."""
    layers = sorted((n for n in modules if re.fullmatch(r"layer\d+", n)), key=lambda n: int(n[5:]))
    if layers:
        return layers
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        return [f"blocks.{i}" for i in range(len(blocks))]
    info = getattr(net, "feature_info", None)
    names = []
    try:
        for f in info or []:
            if int(f.get("reduction", 0)) >= 4 and str(f.get("module", "")) in modules:
                names.append(str(f["module"]))
    except (TypeError, AttributeError, ValueError):
        return []
    return names


def _probe(net: nn.Module, size: tuple[int, int]) -> tuple[dict[str, Any], Tensor]:
    """One eval-mode forward of a zero image ``[1, 3, *size]`` through ``forward_features``:
    the first output of every named module, and the features."""
    outputs: dict[str, Any] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o))
             for name, module in net.named_modules() if name]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            p = next(net.parameters(), None)
            x = torch.zeros(1, 3, *size, device=p.device if p is not None else "cpu")
            feats = net.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return outputs, feats


def _map_size(out: Any) -> tuple[int, int] | None:
    if isinstance(out, Tensor) and out.ndim == 4:
        return int(out.shape[-2]), int(out.shape[-1])
    return None


def resolve_target_layer(backbone: nn.Module, layer: str = "auto",
                         input_size: int | Sequence[int] | None = None,
                         min_size: int = MIN_MAP_SIZE) -> TargetLayer:
    """Choose the module whose feature map Grad-CAM explains.

    Args:
        backbone: an :class:`mpcs.models.Encoder` or a timm model with ``forward_features``.
        layer: ``"last"``: the map the encoder pools (``layer4`` of a ResNet, ``bn2`` of an
            EfficientNet); ``"auto"``: the deepest stage whose map is at least ``min_size``
            cells on its shorter side at ``input_size`` (candidates: ``layer4..layer1`` of
            a ResNet; the last map and the ``blocks`` stages of an EfficientNet; timm's
            ``feature_info`` stages otherwise), which is ``"last"`` whenever the last map is
            big enough (e.g. at 224 px) and the largest map if none is; or a module name of
            the timm model (``"layer3"``, ``"blocks.5"``; an ``encoder.model.`` or
            ``model.`` prefix is accepted).
        input_size: side (or ``(H, W)``) of the probe input: the size the model sees; default:
            the encoder's ``input_size``, else 224.
        min_size: the smallest acceptable shorter side for ``"auto"``.

    A map of an intermediate stage is coarser in meaning and finer in space: at a small input
    size (32 px gives ResNet's ``layer4`` a 1x1 map, so its Grad-CAM is flat) it localises,
    but it is less class-specific than the last stage's (its channels are lower-level
    features, and the gradient reaches them through the later stages). Pictures therefore
    name the layer whenever it is not the last stage.

    Example:
        >>> enc = create_encoder("resnet10t")  # doctest: +SKIP
        >>> resolve_target_layer(enc, "auto", 32).describe()  # doctest: +SKIP
        'layer2, 4x4'

    Raises:
        ConfigError: no ``forward_features``; features that are not a ``[B, C, h, w]`` map;
            an unknown module name (the message lists the stage names) or one whose output is
            not a map.
    """
    net = getattr(backbone, "model", backbone)
    kind = type(net).__name__
    if not hasattr(net, "forward_features"):
        raise ConfigError(f"{kind} has no forward_features; pass target_layer")
    if input_size is None:
        enc_size = getattr(backbone, "input_size", None)
        input_size = tuple(enc_size) if isinstance(enc_size, (tuple, list)) else 224
    size = _size2(input_size)
    if min_size < 1:
        raise ConfigError(f"Grad-CAM min_size must be >= 1, got {min_size}")
    modules = dict(net.named_modules())
    if layer not in LAYER_MODES:
        for prefix in ("encoder.model.", "model."):
            if layer not in modules and layer.startswith(prefix):
                layer = layer.removeprefix(prefix)
    stages = _stage_names(net, modules)
    if layer not in LAYER_MODES and (not layer or layer not in modules):
        raise ConfigError(f"{kind}: unknown Grad-CAM layer {layer!r}; valid: "
                          f"{', '.join([*LAYER_MODES, *stages])} or another module name of "
                          f"the model (e.g. {stages[-1] + '.0' if stages else 'a conv layer'})")
    outputs, feats = _probe(net, size)
    if feats.ndim != 4:
        raise ConfigError(f"{kind}: forward_features gives a {feats.ndim}-D tensor, not a "
                          "convolutional map; Grad-CAM needs [B, C, h, w]")
    # named_modules order puts parents before children: the outermost match comes first, and
    # its hook ran after its whole forward (an inner layer's output may have been changed in
    # place later, e.g. bn2 -> += shortcut -> ReLU(inplace) in a ResNet block).
    last = next((n for n in modules if n and outputs.get(n) is feats), None)
    last_size = _map_size(feats)
    assert last_size is not None

    def pick(name: str) -> TargetLayer:
        hw = _map_size(outputs.get(name))
        if hw is None:
            got = outputs.get(name)
            what = "is not run by forward_features" if name not in outputs else \
                f"gives {getattr(got, 'shape', type(got).__name__)}"
            raise ConfigError(f"{kind}: Grad-CAM layer {name!r} {what}, not a [B, C, h, w] "
                              f"map; valid: {', '.join([*LAYER_MODES, *stages])}")
        return TargetLayer(name, modules[name], hw, size, name == last, last_size)

    if layer == "last":
        if last is None:
            raise ConfigError(f"{kind}: no module outputs the pooled feature map; "
                              "pass target_layer")
        return pick(last)
    if layer != "auto":
        return pick(layer)
    candidates = [n for n in stages if n != last and _map_size(outputs.get(n)) is not None]
    candidates += [last] if last is not None else []
    if not candidates:
        raise ConfigError(f"{kind}: no convolutional stage found for Grad-CAM; pass a layer "
                          "name")
    for name in reversed(candidates):  # deepest first
        if min(_map_size(outputs[name]) or (0, 0)) >= min_size:
            return pick(name)
    best = max(reversed(candidates), key=lambda n: min(_map_size(outputs[n]) or (0, 0)))
    chosen = pick(best)
    log.warning("%s: no stage has a map of at least %dx%d at %dx%d px; Grad-CAM uses the "
                "largest, %s", kind, min_size, min_size, size[0], size[1], chosen.describe())
    return chosen


def find_target_layer(backbone: nn.Module, input_size: int | Sequence[int] | None = None, *,
                      layer: str = "auto", min_size: int = MIN_MAP_SIZE) -> nn.Module:
    """The module of ``backbone`` whose feature map Grad-CAM explains.

    ``layer="last"`` gives the map the encoder pools (``layer4`` of a ResNet, ``bn2`` of an
    EfficientNet); ``"auto"`` (default) the deepest stage whose map is at least ``min_size``
    cells on its shorter side at ``input_size`` (the last stage whenever it is big enough,
    so nothing changes at 224 px; ``layer2`` or ``layer3`` of a ResNet at 32 px, where
    ``layer4`` is 1x1); a module name (``"layer3"``) picks that module. An intermediate-layer
    map is less class-specific than the last one. See :func:`resolve_target_layer`, which
    also returns the name and the map size.

    Raises:
        ConfigError: see :func:`resolve_target_layer`.
    """
    return resolve_target_layer(backbone, layer, input_size, min_size).module


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


# --------------------------------------------------------------------------- pictures


def overlay(rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5,
            colormap: str = "jet") -> np.ndarray:
    """Blend a map over an image: ``uint8 [H, W, 3]`` from ``rgb`` ``uint8 [H, W, 3]`` and
    ``cam`` ``[h, w]`` in ``[0, 1]`` (resized to ``H x W`` when its size differs)."""
    import matplotlib

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"overlay needs an RGB image [H, W, 3], got {rgb.shape}")
    cam = resize_map(cam, rgb.shape[:2])
    heat = matplotlib.colormaps[colormap](np.clip(cam, 0, 1))[..., :3]
    mixed = image_weight * rgb.astype(np.float32) / 255 + (1 - image_weight) * heat
    return np.clip(mixed * 255 + 0.5, 0, 255).astype(np.uint8)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``[h, w]`` map to ``size = (H, W)``."""
    if tuple(cam.shape) == tuple(size):
        return np.asarray(cam, dtype=np.float32)
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def _display_rgb(image: Any, max_side: int) -> np.ndarray:
    """The decoded image as ``uint8 [H, W, 3]``, shrunk so its longer side is ``max_side``."""
    from PIL import Image

    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                             Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


# --------------------------------------------------------------------------- files


@dataclass
class CamImage:
    """Grad-CAM of one image by one checkpoint.

    Attributes:
        path: the image file. rgb: the displayed image ``uint8 [H, W, 3]``.
        true_label: the class parsed from the BreakHis name (None when it does not parse or
            is not a class of the model).
        probabilities: ``{class: probability}``. predicted: the argmax class.
        cams: ``{class: map [H, W] in [0, 1]}`` at the displayed size.
        layer: the explained module (``layer4``); map_size: its ``(h, w)`` map;
        last_layer: whether it is the encoder's last stage (the map it pools).
    """

    path: Path
    rgb: np.ndarray
    true_label: str | None
    probabilities: dict[str, float]
    predicted: str
    cams: dict[str, np.ndarray] = field(default_factory=dict)
    layer: str = ""
    map_size: tuple[int, int] | None = None
    last_layer: bool = True

    @property
    def layer_note(self) -> str:
        """``"layer2, 8x8"`` when the map is not of the last stage, else ``""``."""
        if self.last_layer or not self.layer:
            return ""
        size = f", {self.map_size[0]}x{self.map_size[1]}" if self.map_size else ""
        return f"{self.layer}{size}"


def checkpoint_label(path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> str:
    """A short name for a fine-tuned checkpoint: the method of its experiment cell
    (``cell.json`` beside it), else its initialisation (``ImageNet``, ``Random init``,
    ``MPCS (<pre-training run>)``), else its folder name."""
    path = Path(path)
    cell = path.parent / "cell.json"
    if cell.is_file():
        try:
            return str(json.loads(cell.read_text())["method"])
        except (OSError, ValueError, KeyError):
            pass
    meta = meta or {}
    kind = str(meta.get("init_kind", ""))
    if kind in _INIT_LABELS:
        return _INIT_LABELS[kind]
    if kind == "mpcs-pretrain":
        run = Path(str(meta.get("init", ""))).parent.parent.name
        return f"MPCS ({run})" if run else "MPCS"
    return path.parent.name or path.stem


def _class_index(names: Sequence[str], name: str, where: Path) -> int:
    if name not in names:
        raise ConfigError(f"{where}: class {name!r} is not one of the model's classes "
                          f"{list(names)}")
    return list(names).index(name)


def explain(checkpoint: str | os.PathLike[str], files: Sequence[Path],
            classes: str | Sequence[str] = CLASS_MODES, batch_size: int = 8,
            max_side: int = 384, skip_bad: bool = False,
            device: str | torch.device = "cpu", layer: str = "auto",
            min_size: int = MIN_MAP_SIZE) -> tuple[str, list[CamImage]]:
    """Grad-CAM of every image in ``files`` by one fine-tuned (or linear-eval) ``best.pt``.

    Args:
        classes: which maps to compute per image: ``"predicted"``, ``"true"`` (when the
            BreakHis name gives a class of the model) and/or class names.
        max_side: longer side of the displayed image (and of the maps).
        layer, min_size: the explained layer, ``"auto"``, ``"last"`` or a module name (see
            :func:`resolve_target_layer`); ``"auto"`` avoids the flat maps of a 1x1 last
            stage at small input sizes, at the cost of less class-specific maps.

    Returns:
        ``(label, results)``: :func:`checkpoint_label` and one :class:`CamImage` per image
        kept, in order.

    Raises:
        CheckpointError: not a fine-tuned checkpoint. ConfigError: an unknown class or
            layer name. DataError: an unreadable image (without ``skip_bad``).
    """
    from mpcs.engine.finetune import load_finetuned
    from mpcs.inference import breakhis_fields, read_model_input

    path = Path(checkpoint)
    try:
        model, meta = load_finetuned(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; Grad-CAM needs a fine-tuned or linear-eval best.pt") \
            from None
    wanted = [classes] if isinstance(classes, str) else list(classes)
    names = list(model.class_names)
    for c in wanted:
        if c not in CLASS_MODES:
            _class_index(names, c, path)
    model = model.to(device).eval()
    size = int(model.input_size)
    mean, std = tuple(model.encoder.mean), tuple(model.encoder.std)
    results: list[CamImage] = []
    with GradCAM(model, layer, min_size) as cam:
        chosen = cam.layer
        assert chosen is not None
        _log_layer(path, chosen)
        for start in range(0, len(files), batch_size):
            batch: list[CamImage] = []
            xs = []
            for file in files[start:start + batch_size]:
                read = read_model_input(file, size, mean, std, skip_bad, what="Grad-CAM")
                if read is None:
                    continue
                image, x = read
                xs.append(x)
                true = breakhis_fields(file)["label"]
                batch.append(CamImage(Path(file), _display_rgb(image, max_side),
                                      true if true in names else None, {}, "",
                                      layer=chosen.name, last_layer=chosen.is_last))
            if not batch:
                continue
            x = torch.cat(xs).to(device)
            maps, probs = cam(x)  # predicted class
            probs_np = probs.cpu().numpy()
            for item, p in zip(batch, probs_np, strict=True):
                item.map_size = cam.map_size
                item.probabilities = {n: float(v) for n, v in zip(names, p, strict=True)}
                item.predicted = names[int(p.argmax())]
            pred_idx = probs_np.argmax(axis=1)
            fixed = [names.index(c) for c in wanted if c not in CLASS_MODES]
            targets: list[list[int]] = []
            for i, item in enumerate(batch):
                ks = [int(pred_idx[i])] if "predicted" in wanted else []
                if "true" in wanted and item.true_label:
                    ks.append(names.index(item.true_label))
                targets.append(list(dict.fromkeys([*ks, *fixed])))
            needed = {k for i, ks in enumerate(targets) for k in ks if k != pred_idx[i]}
            per_class = {k: cam(x, k)[0].cpu().numpy() for k in sorted(needed)}
            maps_np = maps.cpu().numpy()
            for i, item in enumerate(batch):
                h, w = item.rgb.shape[:2]
                for k in targets[i]:
                    m = maps_np[i] if k == pred_idx[i] else per_class[k][i]
                    item.cams[names[k]] = resize_map(m, (h, w))
            results.extend(batch)
    return checkpoint_label(path, meta), results


def _log_layer(path: Path, chosen: TargetLayer) -> None:
    """Say which layer is explained when it is not the plain last stage, or cannot localise."""
    h, w = chosen.input_size
    if chosen.map_size == (1, 1):
        log.warning("%s: Grad-CAM of %s, a 1x1 map at the model's input size %dx%d, cannot "
                    "localise (flat maps); use layer 'auto' or a module name such as layer3, "
                    "or train at a larger input size", path, chosen.name, h, w)
    elif not chosen.is_last:
        lh, lw = chosen.last_size
        log.info("%s: Grad-CAM of %s (the last stage is %dx%d at %dx%d px); an intermediate "
                 "map localises but is less class-specific", path, chosen.describe(), lh, lw,
                 h, w)


def _cam_class(item: CamImage, mode: str) -> str:
    """The class whose map the comparison grid shows for ``mode``."""
    if mode == "predicted":
        return item.predicted
    if mode == "true":
        return item.true_label or item.predicted
    return mode


def _roles(item: CamImage, name: str) -> str:
    roles = [r for r, c in (("predicted", item.predicted), ("true", item.true_label)) if c == name]
    return f"{' = '.join(roles)}: {name}" if roles else name


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:120] or "image"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)
    return path


def _new_figure(rows: int, cols: int, aspect: float = 1.0, cell: float = 2.6
                ) -> tuple[Any, np.ndarray]:
    """A figure of ``rows x cols`` image panels of height/width ``aspect`` (axes off)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cell * cols, (cell * aspect + 0.45) * rows + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    return fig, axes


def _flat_note(cam: np.ndarray) -> str:
    """A title note for a map without localisation (all zeros: no positive evidence, or a
    1x1 feature map at a small input size)."""
    return " (flat map)" if float(np.max(cam)) <= 0 else ""


def _layer_line(item: CamImage) -> str:
    """A title line naming the explained layer when it is not the last stage."""
    return f"\n{item.layer_note}" if item.layer_note else ""


def _aspect(item: CamImage) -> float:
    h, w = item.rgb.shape[:2]
    return h / max(w, 1)


def _short(path: Path, width: int = 34) -> str:
    name = path.name
    return name if len(name) <= width else name[:width - 3] + "..."


def image_figure(path: Path, per_checkpoint: Sequence[tuple[str, CamImage]], out: Path) -> Path:
    """One PNG for one image: a row per checkpoint, the input then one overlay per class
    (predicted, true, asked), titled with the class's role and probability."""
    cols = 1 + max(len(item.cams) for _, item in per_checkpoint)
    fig, axes = _new_figure(len(per_checkpoint), cols, _aspect(per_checkpoint[0][1]))
    for r, (label, item) in enumerate(per_checkpoint):
        axes[r, 0].imshow(item.rgb)
        truth = f"true: {item.true_label}" if item.true_label else "true: unknown"
        axes[r, 0].set_title(f"{label}\n{truth}", fontsize=8)
        for c, (name, cam) in enumerate(item.cams.items(), start=1):
            axes[r, c].imshow(overlay(item.rgb, cam))
            axes[r, c].set_title(f"{_roles(item, name)}\np={item.probabilities[name]:.2f}"
                                 f"{_flat_note(cam)}{_layer_line(item)}", fontsize=8)
    fig.suptitle(_short(path, 60), fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def grid_figure(labels: Sequence[str], per_image: Sequence[Sequence[CamImage]], mode: str,
                out: Path) -> Path:
    """The Fig.-5-style comparison: rows images, columns the input and one overlay per
    checkpoint, each titled with the checkpoint's label, the class shown and its
    probability."""
    aspect = float(np.median([_aspect(items[0]) for items in per_image]))
    fig, axes = _new_figure(len(per_image), 1 + len(labels), aspect)
    for r, items in enumerate(per_image):
        first = items[0]
        axes[r, 0].imshow(first.rgb)
        axes[r, 0].set_title(f"{_short(first.path)}\ntrue: {first.true_label or 'unknown'}",
                             fontsize=7)
        for c, (label, item) in enumerate(zip(labels, items, strict=True), start=1):
            name = _cam_class(item, mode)
            axes[r, c].imshow(overlay(item.rgb, item.cams[name]))
            shown = "" if name == item.predicted else f", map of {name}"
            prob = item.probabilities[item.predicted]
            axes[r, c].set_title(f"{label}\n{item.predicted} p={prob:.2f}{shown}"
                                 f"{_flat_note(item.cams[name])}{_layer_line(item)}",
                                 fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def gradcam_images(checkpoints: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                   out_dir: str | os.PathLike[str], class_mode: str = "predicted",
                   labels: Sequence[str] | None = None, max_images: int | None = None,
                   grid_images: int = 8, max_side: int = 384, batch_size: int = 8,
                   skip_bad: bool = False, device: str | torch.device = "cpu",
                   grid_name: str = "gradcam_grid.png", layer: str = "auto",
                   min_size: int = MIN_MAP_SIZE) -> list[Path]:
    """Grad-CAM pictures of ``images`` for one or more fine-tuned checkpoints.

    Writes ``out_dir/<image stem>.png`` per image (``<stem>_2.png`` for a second image of the
    same name; rows: checkpoints; columns: the input,
    the overlay of the predicted class, of the true class when known, and of ``class_mode``
    when it names a class) and, with two or more checkpoints, ``out_dir/<grid_name>``
    comparing them on the first ``grid_images`` images (the map of ``class_mode``:
    ``predicted`` - each model's own prediction -, ``true`` - the true class where known -, or
    a class name). ``layer`` (``"auto"``, ``"last"`` or a module name) picks the explained
    layer per checkpoint (:func:`resolve_target_layer`); titles name it when it is not the
    last stage. Returns the written paths, the grid last.

    Raises:
        ConfigError: no checkpoint, an unknown class, labels not matching the checkpoints.
        CheckpointError, DataError: see :func:`explain`.
    """
    from mpcs.inference import list_images

    ckpts = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if not ckpts:
        raise ConfigError("Grad-CAM needs at least one --checkpoint")
    if labels is not None and len(labels) != len(ckpts):
        raise ConfigError(f"{len(labels)} label(s) for {len(ckpts)} checkpoint(s)")
    if grid_images < 1:
        raise ConfigError(f"grid_images must be >= 1, got {grid_images}")
    files = list_images(images, skip_bad=skip_bad)
    if max_images is not None:
        files = files[:max_images]
    classes = list(CLASS_MODES) + ([class_mode] if class_mode not in CLASS_MODES else [])
    names, runs = [], []
    for ckpt in ckpts:
        name, items = explain(ckpt, files, classes, batch_size, max_side, skip_bad, device,
                              layer=layer, min_size=min_size)
        names.append(name)
        runs.append({str(i.path): i for i in items})
    if labels is not None:
        names = list(labels)
    names = _unique(names)
    common = [f for f in files if all(str(f) in r for r in runs)]
    if not common:
        raise DataError("Grad-CAM: no image could be read")
    out = Path(out_dir)
    written = []
    stems = _unique([_safe_stem(f) for f in common], "_{}")  # same name in two folders
    for f, stem in zip(common, stems, strict=True):
        written.append(image_figure(f, [(n, r[str(f)]) for n, r in zip(names, runs, strict=True)],
                                    out / f"{stem}.png"))
    if len(ckpts) >= 2:
        rows = [[r[str(f)] for r in runs] for f in common[:grid_images]]
        written.append(grid_figure(names, rows, class_mode, out / grid_name))
    return written


def _unique(names: Sequence[str], suffix: str = " ({})") -> list[str]:
    """Make names distinct by numbering repeats (``A``, ``A (2)``)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else n + suffix.format(seen[n]))
    return out
