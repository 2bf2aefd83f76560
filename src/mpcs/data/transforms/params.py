"""The parameters of the uniform transformation: strengths (:class:`AugmentConfig`) and one
drawn parameter set per pair (:class:`PairParams`, :func:`sample_params`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mpcs.core.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the uniform transformation (0 switches an operation off)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    rotation_degrees: float = 15.0
    translate: float = 0.05
    hed: float = 0.0
    per_view_colour: bool = False

    def validate(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        for name in ("hflip", "vflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability, got {getattr(self, name)}")
        if not 0 <= self.rotation_degrees <= 180:
            raise ConfigError(f"augment.rotation_degrees must be in [0, 180], "
                              f"got {self.rotation_degrees}")
        if not 0 <= self.translate < 0.5:
            raise ConfigError(f"augment.translate must be in [0, 0.5), got {self.translate}")
        if not 0 <= self.hed < 1:
            raise ConfigError(f"augment.hed must be in [0, 1), got {self.hed}")


@dataclass
class PairParams:
    """One parameter set per pair: every field has a leading batch dimension [N].

    ``hed_scale``/``hed_shift`` ([N, 3]) are ``None`` without stain jitter; ``second`` holds
    the colour and stain draws of view 2 when they are drawn per view (its geometric fields
    are not used: the geometry is this set's)."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    hflip: Tensor
    vflip: Tensor
    rot90: Tensor
    angle: Tensor
    shift: Tensor  # [N, 2] as a fraction of width and height
    hed_scale: Tensor | None = None
    hed_shift: Tensor | None = None
    second: PairParams | None = None

    def __len__(self) -> int:
        return int(self.brightness.shape[0])

    def take(self, start: int, stop: int) -> PairParams:
        """The parameter sets of pairs ``start:stop`` (a rank's shard of a global draw)."""
        return PairParams(**{k: None if v is None else (v.take(start, stop) if k == "second"
                                                         else v[start:stop])
                             for k, v in vars(self).items()})


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def sample_params(cfg: AugmentConfig, n: int, g: torch.Generator) -> PairParams:
    """Draw ``n`` parameter sets on the CPU from generator ``g``.

    The draws of the stain jitter and of view 2's colours come after the others, so that a
    configuration without them draws exactly what it drew before they existed."""
    p = PairParams(
        brightness=_uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g),
        contrast=_uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g),
        saturation=_uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g),
        hue=_uniform(n, -cfg.hue, cfg.hue, g),
        hflip=torch.rand(n, generator=g) < cfg.hflip,
        vflip=torch.rand(n, generator=g) < cfg.vflip,
        rot90=(torch.randint(0, 4, (n,), generator=g) if cfg.rot90
               else torch.zeros(n, dtype=torch.long)),
        angle=_uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees, g),
        shift=_uniform(2 * n, -cfg.translate, cfg.translate, g).view(n, 2),
    )
    if cfg.hed:
        p.hed_scale, p.hed_shift = _hed_draw(cfg.hed, n, g)
    if cfg.per_view_colour:
        p.second = PairParams(**{**vars(p), "second": None,
                                 **_colour_draw(cfg, n, g)})
    return p


def _hed_draw(strength: float, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    scale = _uniform(3 * n, 1 - strength, 1 + strength, g).view(n, 3)
    return scale, _uniform(3 * n, -strength, strength, g).view(n, 3)


def _colour_draw(cfg: AugmentConfig, n: int, g: torch.Generator) -> dict[str, Tensor | None]:
    """A second draw of the colour and stain fields (view 2's, with ``per_view_colour``)."""
    out: dict[str, Tensor | None] = {
        "brightness": _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g),
        "contrast": _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g),
        "saturation": _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g),
        "hue": _uniform(n, -cfg.hue, cfg.hue, g)}
    if cfg.hed:
        out["hed_scale"], out["hed_shift"] = _hed_draw(cfg.hed, n, g)
    return out


def per_image(v: Tensor) -> Tensor:
    """A per-image factor ``[N]`` shaped to broadcast over ``[N, C, H, W]``."""
    return v.view(-1, 1, 1, 1)
