"""The uniform transformation of a batch of pairs (:class:`UniformPairAugment`), the
deterministic pre-processing of evaluation (:func:`eval_transform`), and normalisation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from mpcs.core.errors import ConfigError
from mpcs.data.transforms.colour import adjust_hue, gray_into, gray_mean, hed_jitter
from mpcs.data.transforms.geometry import (
    flip_rotate,
    fused_theta,
    resize,
    rotate_translate,
    warp,
)
from mpcs.data.transforms.params import AugmentConfig, PairParams, per_image, sample_params

#: Pixels per channel of one chunk of a batch augmented on the CPU (see
#: :meth:`UniformPairAugment.apply`): one 224 x 224 view, or 28 views of 48 x 48.
CPU_CHUNK_PIXELS = 224 * 224


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def normalize_(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """In place ``(x - mean) / std``."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def to_float(x: Tensor) -> Tensor:
    """uint8 [N,3,H,W] -> float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class UniformPairAugment:
    """Apply one sampled parameter set per pair to both views, for a batch of pairs.

    Args:
        cfg: augmentation strengths.
        input_size: side of the square network input; views are resized to it last.
        mean, std: normalisation the encoder expects.

    Call with ``view1, view2`` of shape [N, 3, H, W] (uint8 or float in [0, 1], any device)
    and a CPU ``torch.Generator``; returns two float tensors [N, 3, input_size, input_size].
    """

    def __init__(self, cfg: AugmentConfig, input_size: int,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        cfg.validate()
        if input_size < 8:
            raise ConfigError(f"input_size must be >= 8, got {input_size}")
        self.cfg, self.input_size, self.mean, self.std = cfg, input_size, mean, std

    def apply(self, x: Tensor, p: PairParams) -> Tensor:
        """The transformation of a batch ``x`` [B, 3, H, W] with B parameter sets; the
        result is a new tensor (``x`` is left as it is).

        On the CPU the batch is processed in chunks of about :data:`CPU_CHUNK_PIXELS` pixels
        per channel, so that the dozens of element-wise passes of the colour operations
        work on data held in the core's cache instead of streaming the whole batch through
        memory for each pass (measured 1.6x faster at 224 px on one core); on a GPU the
        whole batch is one pass per operation. Per-image factors and warp matrices are
        prepared once for the batch.
        """
        n = x.shape[0]
        plan = _BatchPlan.of(p, x.shape, x.device)
        if x.device.type != "cpu":
            return self._apply(x, plan)
        chunk = max(1, CPU_CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))
        if chunk >= n and torch.get_num_threads() == 1:
            return self._apply(x, plan)
        out = torch.empty(n, 3, self.input_size, self.input_size, dtype=torch.float32)

        def one(start: int) -> None:
            stop = min(n, start + chunk)
            out[start:stop] = self._apply(x[start:stop], plan.take(start, stop))

        def all_chunks() -> None:
            for start in range(0, n, chunk):
                one(start)

        if torch.get_num_threads() == 1:
            all_chunks()
        else:  # in a helper thread that runs torch ops on one intra-op thread
            _chunk_pool().submit(all_chunks).result()
        return out

    def _apply(self, x: Tensor, plan: _BatchPlan) -> Tensor:
        if plan.hed_scale is not None:
            x = hed_jitter(to_float(x), plan.hed_scale, plan.hed_shift)
        if x.dtype == torch.uint8 and plan.brightness is not None:
            # to_float and brightness in one pass: x * (f / 255), clamped to [0, 1]
            y = x.float().mul_(plan.brightness / 255.0).clamp_(0, 1)
        else:
            y = to_float(x)
            if plan.brightness is not None:
                y = (y * plan.brightness).clamp_(0, 1)
        owned = y is not x
        if (plan.contrast is not None or plan.saturation is not None) and not owned:
            y, owned = y.clone(), True
        if plan.contrast is not None:
            y.lerp_(gray_mean(y).expand_as(y), plan.contrast).clamp_(0, 1)
        if plan.saturation is not None:
            y.lerp_(gray_into(y).expand_as(y), plan.saturation).clamp_(0, 1)
        if plan.hue is not None:
            y, owned = adjust_hue(y, plan.hue), True
        if plan.theta is not None:
            y, owned = warp(y, plan.theta), True
        else:
            y = rotate_translate(flip_rotate(y, plan.params), plan.params.angle,
                                 plan.params.shift)
            owned = owned or y is not x
        y = resize(y, self.input_size)
        return normalize_(y if owned or y is not x else y.clone(), self.mean, self.std)

    def sample(self, n: int, generator: torch.Generator) -> PairParams:
        """``n`` parameter sets (one per pair) drawn from ``generator``, exactly as a call
        on ``n`` pairs draws them."""
        return sample_params(self.cfg, n, generator)

    def __call__(self, view1: Tensor, view2: Tensor, generator: torch.Generator | None = None,
                 *, params: PairParams | None = None) -> tuple[Tensor, Tensor]:
        """Both views of N pairs with one parameter set per pair: from ``params`` (N sets,
        e.g. this rank's slice of a global draw, see :meth:`PairParams.take`) or drawn
        from ``generator``."""
        if view1.shape != view2.shape:
            raise ValueError(f"views must have the same shape, got {tuple(view1.shape)} "
                             f"and {tuple(view2.shape)}")
        n = view1.shape[0]
        if params is None:
            if generator is None:
                raise ValueError("give a generator or params")
            params = sample_params(self.cfg, n, generator)
        elif len(params) != n:
            raise ValueError(f"{len(params)} parameter sets for {n} pairs")
        both = self.apply(torch.cat([view1, view2]), _repeat(params))
        return both[:n], both[n:]


_POOL: list[ThreadPoolExecutor] = []


def _chunk_pool() -> ThreadPoolExecutor:
    """One helper thread that runs torch ops on ONE intra-op thread (with OpenMP the
    setting is per thread, so the caller's is untouched). The many small ops of the chunks
    are far slower when each is split over several cores: 2 intra-op threads took 1.5 s per
    128 views at 112 px against 0.1 s on one (2-core machine under load); several helper
    threads did not help either (the chunks' small ops are bound by the GIL)."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpcs-augment",
                                        initializer=torch.set_num_threads, initargs=(1,)))
    return _POOL[0]


@dataclass
class _BatchPlan:
    """Per-image tensors of a batch, prepared once on the batch's device: brightness
    factor [N,1,1,1], lerp weights ``1 - f`` of contrast and saturation [N,1,1,1], hue
    shift [N] and the fused warp [N,2,3]; ``None`` for an operation that changes nothing."""

    params: PairParams
    brightness: Tensor | None
    contrast: Tensor | None
    saturation: Tensor | None
    hue: Tensor | None
    theta: Tensor | None
    hed_scale: Tensor | None = None
    hed_shift: Tensor | None = None

    @classmethod
    def of(cls, p: PairParams, shape: torch.Size, device: torch.device) -> _BatchPlan:
        def factor(v: Tensor, neutral: float, weight: bool) -> Tensor | None:
            if not bool((v != neutral).any()):
                return None
            v = per_image(v.to(device, torch.float32))
            return 1 - v if weight else v

        hed = p.hed_scale is not None and bool(((p.hed_scale != 1) | (p.hed_shift != 0)).any())
        return cls(p, factor(p.brightness, 1.0, False), factor(p.contrast, 1.0, True),
                   factor(p.saturation, 1.0, True),
                   p.hue.to(device) if bool((p.hue != 0).any()) else None,
                   fused_theta(p, shape, device),
                   p.hed_scale.to(device) if hed else None,
                   p.hed_shift.to(device) if hed else None)

    def take(self, start: int, stop: int) -> _BatchPlan:
        return _BatchPlan(self.params.take(start, stop),
                          *(None if t is None else t[start:stop] for t in
                            (self.brightness, self.contrast, self.saturation, self.hue,
                             self.theta, self.hed_scale, self.hed_shift)))


_COLOUR_FIELDS = ("brightness", "contrast", "saturation", "hue", "hed_scale", "hed_shift")


def _repeat(p: PairParams) -> PairParams:
    """The parameters of a concatenated [view1; view2] batch: the same set twice, except the
    colour and stain fields of view 2 where they were drawn per view (``p.second``)."""
    two = p.second if p.second is not None else p

    def both(name: str) -> Tensor | None:
        a = getattr(p, name)
        b = getattr(two, name) if name in _COLOUR_FIELDS else a
        return None if a is None else torch.cat([a, b])

    return PairParams(**{k: both(k) for k in vars(p) if k != "second"})


def eval_transform(x: Tensor, input_size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD) -> Tensor:
    """Deterministic pre-processing for feature extraction: resize and normalise."""
    return normalize(resize(to_float(x), input_size), mean, std)
