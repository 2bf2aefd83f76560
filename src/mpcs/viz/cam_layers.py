"""Which feature map Grad-CAM explains: :func:`resolve_target_layer` for any timm backbone.

By default the map the encoder pools (``timm``'s ``forward_features`` output: ``layer4`` of a
(dilated) ResNet, ``conv_head`` + ``bn2`` of an EfficientNet / EfficientNet-Lite) whenever
that map is at least 4x4 cells at the model's input size; below that (``layer4`` of a ResNet
is 1x1 at 32 px, which gives a flat map) ``layer="auto"`` takes the deepest stage that is
(``layer2``/``layer3`` of a ResNet, a ``blocks`` stage of an EfficientNet). ``layer="last"``
always takes the pooled map; a module name (``"layer3"``) takes that module. The choice is
made from one probe forward of a zero image with hooks on every module.

Example:
    >>> enc = create_encoder("resnet10t")  # doctest: +SKIP
    >>> resolve_target_layer(enc, "auto", 32).describe()  # doctest: +SKIP
    'layer2, 4x4'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mpcs.core.errors import ConfigError

__all__ = ["LAYER_MODES", "MIN_MAP_SIZE", "TargetLayer", "find_target_layer",
           "resolve_target_layer"]

log = logging.getLogger(__name__)

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
    if min_size < 1:
        raise ConfigError(f"Grad-CAM min_size must be >= 1, got {min_size}")
    probe = _Probe(net, _size2(input_size), _module_name(net, layer))
    if probe.layer == "last":
        if probe.last is None:
            raise ConfigError(f"{kind}: no module outputs the pooled feature map; "
                              "pass target_layer")
        return probe.pick(probe.last)
    if probe.layer != "auto":
        return probe.pick(probe.layer)
    return probe.auto(min_size)


def _module_name(net: nn.Module, layer: str) -> str:
    """``layer`` without an ``encoder.model.`` / ``model.`` prefix the model does not have."""
    if layer in LAYER_MODES:
        return layer
    modules = dict(net.named_modules())
    for prefix in ("encoder.model.", "model."):
        if layer not in modules and layer.startswith(prefix):
            layer = layer.removeprefix(prefix)
    return layer


class _Probe:
    """One probe forward of ``net`` at ``size`` and the choices it allows."""

    def __init__(self, net: nn.Module, size: tuple[int, int], layer: str) -> None:
        self.kind = type(net).__name__
        self.size, self.layer = size, layer
        self.modules = dict(net.named_modules())
        self.stages = _stage_names(net, self.modules)
        if layer not in LAYER_MODES and (not layer or layer not in self.modules):
            raise ConfigError(f"{self.kind}: unknown Grad-CAM layer {layer!r}; valid: "
                              f"{self.valid()} or another module name of the model (e.g. "
                              f"{self.stages[-1] + '.0' if self.stages else 'a conv layer'})")
        self.outputs, feats = _probe(net, size)
        if feats.ndim != 4:
            raise ConfigError(f"{self.kind}: forward_features gives a {feats.ndim}-D tensor, "
                              "not a convolutional map; Grad-CAM needs [B, C, h, w]")
        # named_modules order puts parents before children: the outermost match comes first,
        # and its hook ran after its whole forward (an inner layer's output may have been
        # changed in place later, e.g. bn2 -> += shortcut -> ReLU(inplace) in a ResNet block).
        self.last = next((n for n in self.modules if n and self.outputs.get(n) is feats), None)
        last_size = _map_size(feats)
        assert last_size is not None
        self.last_size = last_size

    def valid(self) -> str:
        return ", ".join([*LAYER_MODES, *self.stages])

    def pick(self, name: str) -> TargetLayer:
        hw = _map_size(self.outputs.get(name))
        if hw is None:
            got = self.outputs.get(name)
            what = "is not run by forward_features" if name not in self.outputs else \
                f"gives {getattr(got, 'shape', type(got).__name__)}"
            raise ConfigError(f"{self.kind}: Grad-CAM layer {name!r} {what}, not a "
                              f"[B, C, h, w] map; valid: {self.valid()}")
        return TargetLayer(name, self.modules[name], hw, self.size, name == self.last,
                           self.last_size)

    def auto(self, min_size: int) -> TargetLayer:
        """The deepest stage with a map of at least ``min_size`` cells, else the largest."""
        candidates = [n for n in self.stages
                      if n != self.last and _map_size(self.outputs.get(n)) is not None]
        candidates += [self.last] if self.last is not None else []
        if not candidates:
            raise ConfigError(f"{self.kind}: no convolutional stage found for Grad-CAM; pass "
                              "a layer name")

        def side(name: str) -> int:
            return min(_map_size(self.outputs[name]) or (0, 0))

        for name in reversed(candidates):  # deepest first
            if side(name) >= min_size:
                return self.pick(name)
        chosen = self.pick(max(reversed(candidates), key=side))
        log.warning("%s: no stage has a map of at least %dx%d at %dx%d px; Grad-CAM uses the "
                    "largest, %s", self.kind, min_size, min_size, self.size[0], self.size[1],
                    chosen.describe())
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

