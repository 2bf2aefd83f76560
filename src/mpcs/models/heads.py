"""Projection heads g(.) and the encoder + head model used for MPCS pre-training.

Paper presets (Sec. 4): ResNet-50 2048 -> 1024 -> 128 (SimCLR's head); EfficientNet-b2
printed as "2048-1204-128", i.e. hidden sizes [2048, 1204] on top of the backbone's 1408
features. CPU-sized encoders get small heads (resnet18: 512 -> 512 -> 128; EfficientNet-Lite:
1280 -> 1280 -> 128).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
from torch import nn

from mpcs.core.errors import ConfigError
from mpcs.models.encoders import ENCODERS, Encoder, create_encoder

_GENERIC_HIDDEN = 512
_DEFAULT_OUT = 128


def _positive_int(value: object, what: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


class ProjectionHead(nn.Module):
    """MLP head: (Linear -> BatchNorm1d -> ReLU) per hidden size, then a final Linear.

    Args:
        in_dim: size of the encoder features h.
        hidden_dims: hidden layer sizes (may be empty: a single Linear).
        out_dim: size of the projection z used by the contrastive loss.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise ConfigError(f"head hidden dims must be a list of integers, got {hidden_dims!r}")
        self.in_dim = _positive_int(in_dim, "head input dim")
        self.hidden_dims = tuple(_positive_int(d, "head hidden dim") for d in hidden_dims)
        self.out_dim = _positive_int(out_dim, "head output dim")
        layers: list[nn.Module] = []
        width = self.in_dim
        for hidden in self.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, self.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Project ``[B, in_dim]`` features to ``[B, out_dim]``."""
        return self.net(h)

    def extra_repr(self) -> str:
        """Sizes as ``in-hidden...-out``."""
        return "-".join(str(d) for d in (self.in_dim, *self.hidden_dims, self.out_dim))


def default_head_dims(encoder_name: str, num_features: int | None = None) -> tuple[list[int], int]:
    """Default ``(hidden_dims, out_dim)`` of the projection head for ``encoder_name``.

    Registered encoders use their preset (the paper's for resnet50(_dilated) and
    efficientnet_b2). Other timm models get ``[num_features] -> 128`` (``[512]`` when
    ``num_features`` is not given).

    Raises:
        ConfigError: if ``encoder_name`` is neither registered nor a timm model.
    """
    spec = ENCODERS.get(encoder_name)
    if spec is None and not (isinstance(encoder_name, str) and timm.is_model(encoder_name)):
        raise ConfigError(
            f"unknown encoder {encoder_name!r}: use one of {', '.join(ENCODERS)} "
            "or a timm model name"
        )
    fallback = [num_features] if num_features else [_GENERIC_HIDDEN]
    if spec is None or spec.head_hidden is None:
        return fallback, spec.head_out if spec is not None else _DEFAULT_OUT
    return list(spec.head_hidden), spec.head_out


class MPCSModel(nn.Module):
    """Encoder f and projection head g: ``forward(x) -> (h, z)`` with z = g(f(x))."""

    def __init__(self, encoder: Encoder, head: ProjectionHead) -> None:
        super().__init__()
        if head.in_dim != encoder.num_features:
            raise ConfigError(
                f"projection head input {head.in_dim} does not match encoder "
                f"{encoder.name!r} features {encoder.num_features}"
            )
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the pooled features h ``[B, F]`` and the projection z ``[B, out_dim]``."""
        h = self.encoder(x)
        return h, self.head(h)


def create_mpcs_model(
    encoder_name: str,
    weights: str | os.PathLike[str] = "none",
    head_hidden: Sequence[int] | None = None,
    head_out: int | None = None,
    channels_last: bool = False,
    frozen_stages: int = 0,
    frozen_norm: bool = False,
) -> MPCSModel:
    """Create encoder ``encoder_name`` with ``weights`` and its projection head.

    ``head_hidden``/``head_out`` default to :func:`default_head_dims`; ``weights`` is
    ``"none"``, ``"imagenet"`` or a path to an encoder state dict (see
    :func:`mpcs.models.create_encoder`); ``frozen_stages`` leading stages of the encoder
    are frozen (:meth:`Encoder.freeze_stages`); ``frozen_norm`` keeps the encoder's
    BatchNorm statistics (:meth:`Encoder.freeze_norm_statistics`).
    """
    encoder = create_encoder(encoder_name, weights=weights, channels_last=channels_last)
    encoder.freeze_stages(frozen_stages)
    encoder.freeze_norm_statistics(frozen_norm)
    default_hidden, default_out = default_head_dims(encoder_name, encoder.num_features)
    hidden = default_hidden if head_hidden is None else list(head_hidden)
    out = default_out if head_out is None else head_out
    return MPCSModel(encoder, ProjectionHead(encoder.num_features, hidden, out))
