"""Optimisers (Adam, AdamW, SGD, Barlow Twins-style LARS) and per-global-step lr schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from mpcs.core.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
SCHEDULES = ("cosine", "constant")


def _is_bias_or_norm(p: Tensor) -> bool:
    """Biases and BatchNorm/LayerNorm affine parameters are the parameters with ndim <= 1."""
    return p.ndim <= 1


class LARS(torch.optim.Optimizer):
    """LARS with momentum, as in Barlow Twins (Zbontar et al., 2021).

    For each parameter ``p`` with gradient ``g`` of a group with learning rate ``lr``:

        d = g + weight_decay * p                       (unless excluded from weight decay)
        d = d * eta * ||p|| / ||d||                    (unless excluded from adaptation;
                                                        the ratio is 1 if either norm is 0)
        mu = momentum * mu + d;   p = p - lr * mu

    ``weight_decay_filter`` / ``lars_adaptation_filter`` are per-group flags: when True, the
    group's biases and norm parameters (``p.ndim <= 1``) are excluded from weight decay /
    trust-ratio adaptation, so their update is plain momentum SGD. Their defaults apply to
    groups that do not set them. The momentum buffers live in ``self.state`` and so persist
    through ``state_dict()`` / ``load_state_dict()``.

    Args:
        params: Parameters or parameter-group dicts (see :func:`param_groups_for`).
        lr: Learning rate (>= 0).
        weight_decay: L2 coefficient added to the gradient (>= 0).
        momentum: Momentum factor in [0, 1).
        eta: Trust coefficient (> 0).
        weight_decay_filter: Exclude ndim <= 1 parameters from weight decay.
        lars_adaptation_filter: Exclude ndim <= 1 parameters from the adaptation.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> opt = LARS(param_groups_for(model, 1e-6, 0.2, 0.0048), lr=0.2, weight_decay=1e-6)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        weight_decay_filter: bool = True,
        lars_adaptation_filter: bool = True,
    ) -> None:
        if lr < 0:
            raise ValueError(f"Invalid learning rate {lr}: it must be >= 0.")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay {weight_decay}: it must be >= 0.")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum {momentum}: it must be in [0, 1).")
        if eta <= 0:
            raise ValueError(f"Invalid eta {eta}: it must be > 0.")
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "eta": eta,
            "weight_decay_filter": weight_decay_filter,
            "lars_adaptation_filter": lars_adaptation_filter,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        d = p.grad
        excluded = _is_bias_or_norm(p)
        if not (group["weight_decay_filter"] and excluded):
            d = d.add(p, alpha=group["weight_decay"])
        if not (group["lars_adaptation_filter"] and excluded):
            d = d.mul(_trust_ratio(p, d, group["eta"]))
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        mu = state["momentum_buffer"]
        mu.mul_(group["momentum"]).add_(d)
        p.add_(mu, alpha=-group["lr"])


def _trust_ratio(p: Tensor, d: Tensor, eta: float) -> Tensor:
    """``eta * ||p|| / ||d||``, or 1 when either norm is 0 (scalar tensor, no host sync)."""
    p_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
    one = torch.ones_like(p_norm)
    ratio = torch.where(d_norm > 0, eta * p_norm / d_norm, one)
    return torch.where(p_norm > 0, ratio, one)


def param_groups_for(
    model: nn.Module, weight_decay: float, lr_weights: float, lr_biases: float
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into weights and biases/norm parameters.

    Weights (``ndim > 1``) get ``weight_decay`` and ``lr_weights``. Biases and norm parameters
    (``ndim <= 1``) get ``weight_decay=0``, ``lr_biases`` and the LARS flags that exclude them
    from weight decay and trust-ratio adaptation (other optimisers ignore the flags). Frozen
    parameters (``requires_grad=False``) and empty groups are left out.

    Barlow Twins uses ``lr_weights=0.2`` and ``lr_biases=0.0048``, both scaled by
    ``batch_size / 256`` by the caller.

    Returns:
        Up to two dicts: ``{"params": [...], "lr": ..., "weight_decay": ..., ...}``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in trainable if not _is_bias_or_norm(p)]
    biases = [p for p in trainable if _is_bias_or_norm(p)]
    groups = [
        {"params": weights, "lr": lr_weights, "weight_decay": weight_decay},
        {
            "params": biases,
            "lr": lr_biases,
            "weight_decay": 0.0,
            "weight_decay_filter": True,
            "lars_adaptation_filter": True,
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build the optimiser named in ``cfg`` for the trainable parameters of ``model``.

    Keys of ``cfg``: ``name`` ("adam" | "adamw" | "sgd" | "lars"), ``lr`` (> 0),
    ``weight_decay`` (>= 0, default 0), ``momentum`` (sgd/lars, default 0.9), ``lars_eta``
    (default 0.001), ``lr_biases`` (lars only, default ``lr``). Keys the named optimiser does
    not use are ignored. For every optimiser, biases and norm parameters get no weight decay
    (see :func:`param_groups_for`).

    Raises:
        ConfigError: Unknown name, missing ``lr``, or a value of the wrong type or range.
    """
    name = str(cfg.get("name", "")).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer name {cfg.get('name')!r} is not supported; use one of "
            f"{', '.join(OPTIMIZERS)}."
        )
    if "lr" not in cfg:
        raise ConfigError("optimizer config is missing 'lr'.")
    lr = _number(cfg, "lr", None, minimum=0.0, strict=True)
    weight_decay = _number(cfg, "weight_decay", 0.0, minimum=0.0)
    lr_biases = _number(cfg, "lr_biases", lr, minimum=0.0) if name == "lars" else lr
    groups = param_groups_for(model, weight_decay, lr, lr_biases)
    if not groups:
        raise ConfigError("the model has no trainable parameters to optimise.")

    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    momentum = _number(cfg, "momentum", 0.9, minimum=0.0)
    if momentum >= 1:
        raise ConfigError(f"optimizer momentum must be in [0, 1); got {momentum}.")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    eta = _number(cfg, "lars_eta", 0.001, minimum=0.0, strict=True)
    return LARS(groups, lr=lr, momentum=momentum, eta=eta)


def _number(
    cfg: Mapping[str, Any], key: str, default: float | None, minimum: float, strict: bool = False
) -> float:
    """Read ``cfg[key]`` as a float >= minimum (> minimum if strict) or raise ConfigError."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"optimizer {key} must be a number; got {value!r}.")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"optimizer {key} must be {relation} {minimum}; got {value}.")
    return float(value)


class WarmupSchedule:
    """Multiplier of the base lr at global step ``step`` (0-based): warm-up, then decay.

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the first
    step already has a positive lr and step ``warmup_steps - 1`` reaches the base lr. Then
    "cosine": ``f + (1 - f) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, reaching
    ``f = final_lr_fraction`` at ``step == total_steps`` and staying there; or "constant": 1.

    A plain class rather than a closure so ``LambdaLR.state_dict()`` records its settings.
    """

    def __init__(
        self, total_steps: int, warmup_steps: int, schedule: str, final_lr_fraction: float
    ) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.final_lr_fraction = final_lr_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if step >= self.total_steps:
            return self.final_lr_fraction
        t = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        f = self.final_lr_fraction
        return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    final_lr_fraction: float = 0.0,
) -> LambdaLR:
    """Linear warm-up then cosine (or constant) lr schedule, indexed by the GLOBAL step.

    Call ``scheduler.step()`` once after every ``optimizer.step()``, across epochs (the
    authors' warm-up restarted every epoch). Each parameter group's lr is its own base lr
    times :class:`WarmupSchedule`; the lr used by the first optimiser step is already
    ``base / warmup_steps`` (> 0).

    Raises:
        ConfigError: ``total_steps < 1``, ``warmup_steps`` outside ``[0, total_steps]``,
            unknown ``schedule``, or ``final_lr_fraction`` outside ``[0, 1]``.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"total_steps must be an integer >= 1; got {total_steps!r}.")
    if (
        isinstance(warmup_steps, bool)
        or not isinstance(warmup_steps, int)
        or not 0 <= warmup_steps <= total_steps
    ):
        raise ConfigError(
            f"warmup_steps must be an integer in [0, total_steps={total_steps}]; "
            f"got {warmup_steps!r}."
        )
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"schedule {schedule!r} is not supported; use one of {', '.join(SCHEDULES)}."
        )
    if not 0.0 <= final_lr_fraction <= 1.0:
        raise ConfigError(f"final_lr_fraction must be in [0, 1]; got {final_lr_fraction!r}.")
    fn = WarmupSchedule(total_steps, warmup_steps, schedule, float(final_lr_fraction))
    return LambdaLR(optimizer, lr_lambda=fn)
