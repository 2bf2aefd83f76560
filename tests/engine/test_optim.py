"""Tests for mpcs.engine.optim: LARS, parameter groups, optimiser factory, lr schedules."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mpcs.core.errors import ConfigError
from mpcs.engine.optim import (
    LARS,
    build_optimizer,
    build_scheduler,
    param_groups_for,
)


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # BN after the ReLU: a bias right before BN would get a zero gradient.
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, sched=None) -> None:
    x, y = _batch()
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    if sched is not None:
        sched.step()


def _lrs_over(steps: int, **kwargs) -> list[float]:
    """lr used by optimiser steps 0..steps-1 (base lr 1.0)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# --- schedules --------------------------------------------------------------------------------


def test_cosine_schedule_closed_form() -> None:
    lrs = _lrs_over(103, total_steps=100, warmup_steps=10, final_lr_fraction=0.1)
    assert lrs[0] == pytest.approx(0.1)  # (0 + 1) / 10
    assert lrs[4] == pytest.approx(0.5)  # mid warm-up
    assert lrs[9] == pytest.approx(1.0)  # last warm-up step reaches the base lr
    assert lrs[10] == pytest.approx(1.0)  # cosine starts at the base lr
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lrs[32] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert lrs[99] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lrs[100] == pytest.approx(0.1) and lrs[102] == pytest.approx(0.1)


def test_constant_schedule_after_warmup() -> None:
    lrs = _lrs_over(8, total_steps=8, warmup_steps=4, schedule="constant")
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(("total", "warmup"), [(1, 0), (1, 1), (100, 0), (100, 100), (10**6, 10)])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_first_step_lr_is_positive(total: int, warmup: int, schedule: str) -> None:
    assert _lrs_over(1, total_steps=total, warmup_steps=warmup, schedule=schedule)[0] > 0


def test_warmup_is_indexed_by_global_step_across_epochs() -> None:
    # 3 "epochs" of 4 steps with an 8-step warm-up: the lr keeps rising across the epoch
    # boundary instead of restarting (the authors' per-epoch indexing).
    lrs = _lrs_over(12, total_steps=12, warmup_steps=8)
    assert all(a < b for a, b in zip(lrs[:8], lrs[1:8], strict=False))
    assert lrs[4] > lrs[3]


def test_schedule_scales_each_group_by_its_own_base_lr() -> None:
    groups = [
        {"params": [nn.Parameter(torch.zeros(2, 2))], "lr": 0.2},
        {"params": [nn.Parameter(torch.zeros(2))], "lr": 0.0048},
    ]
    opt = torch.optim.SGD(groups, lr=1.0)
    build_scheduler(opt, total_steps=10, warmup_steps=4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.0012])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_steps": 0, "warmup_steps": 0},
        {"total_steps": 10, "warmup_steps": -1},
        {"total_steps": 10, "warmup_steps": 11},
        {"total_steps": 10.0, "warmup_steps": 1},
        {"total_steps": 10, "warmup_steps": 1, "schedule": "step"},
        {"total_steps": 10, "warmup_steps": 1, "final_lr_fraction": 1.5},
    ],
)
def test_scheduler_rejects_bad_arguments(kwargs: dict) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError):
        build_scheduler(opt, **kwargs)


def test_scheduler_state_dict_round_trip() -> None:
    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
        return opt, build_scheduler(opt, total_steps=20, warmup_steps=5, final_lr_fraction=0.01)

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for _ in range(5):
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], abs=0)
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


# --- parameter groups and factory -------------------------------------------------------------


def test_param_groups_split_weights_from_biases_and_norms() -> None:
    model = _tiny_model()
    model[0].bias.requires_grad_(False)
    weights, biases = param_groups_for(model, weight_decay=1e-6, lr_weights=0.2, lr_biases=0.01)
    assert {id(p) for p in weights["params"]} == {id(model[0].weight), id(model[3].weight)}
    expected_biases = {id(model[2].weight), id(model[2].bias), id(model[3].bias)}
    assert {id(p) for p in biases["params"]} == expected_biases  # frozen bias left out
    assert (weights["lr"], weights["weight_decay"]) == (0.2, 1e-6)
    assert (biases["lr"], biases["weight_decay"]) == (0.01, 0.0)
    assert biases["weight_decay_filter"] and biases["lars_adaptation_filter"]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("lars", LARS),
        ("LARS", LARS),
    ],
)
def test_build_optimizer_types(name: str, cls: type) -> None:
    opt = build_optimizer(_tiny_model(), {"name": name, "lr": 0.1, "weight_decay": 1e-4})
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_build_optimizer_lars_settings() -> None:
    cfg = {
        "name": "lars",
        "lr": 0.2,
        "lr_biases": 0.0048,
        "weight_decay": 1e-6,
        "momentum": 0.8,
        "lars_eta": 0.02,
    }
    opt = build_optimizer(_tiny_model(), cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.0048]
    assert all(g["momentum"] == 0.8 and g["eta"] == 0.02 for g in opt.param_groups)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "rmsprop", "lr": 0.1}, "adam, adamw, sgd, lars"),
        ({"lr": 0.1}, "adam, adamw, sgd, lars"),
        ({"name": "adam"}, "lr"),
        ({"name": "adam", "lr": 0}, "lr"),
        ({"name": "adam", "lr": "0.1"}, "lr"),
        ({"name": "sgd", "lr": 0.1, "weight_decay": -1}, "weight_decay"),
        ({"name": "sgd", "lr": 0.1, "momentum": 1.0}, "momentum"),
        ({"name": "lars", "lr": 0.1, "lars_eta": 0}, "lars_eta"),
    ],
)
def test_build_optimizer_rejects_bad_config(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_optimizer(_tiny_model(), cfg)


# --- LARS -------------------------------------------------------------------------------------


def test_lars_first_scheduled_step_changes_every_parameter() -> None:
    # Guards against the authors' multi-GPU run whose lr stayed at 0 (defect 1).
    model = _tiny_model()
    cfg = {"name": "lars", "lr": 0.2, "lr_biases": 0.0048, "weight_decay": 1e-6}
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, total_steps=1000, warmup_steps=100)
    before = [p.detach().clone() for p in model.parameters()]
    _train_step(model, opt, sched)
    for (name, p), old in zip(model.named_parameters(), before, strict=True):
        assert not torch.equal(p, old), f"{name} was not updated"


def test_lars_bias_and_norm_update_is_plain_momentum_sgd() -> None:
    lars_model, sgd_model = _tiny_model(), _tiny_model()
    lars = LARS(param_groups_for(lars_model, 0.5, 0.1, 0.05), lr=0.1, weight_decay=0.5)
    # Reference: momentum SGD without weight decay on every parameter at the bias lr.
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # two steps so the momentum buffer takes part
        for p, q in zip(lars_model.parameters(), sgd_model.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        lars.step()
        sgd.step()
    lars_params = dict(lars_model.named_parameters())
    sgd_params = dict(sgd_model.named_parameters())
    # two implementations (LARS's update, torch's foreach SGD): equal up to rounding, which
    # depends on the CPU's vector path; the decay and trust ratio they skip change ~1e-2
    for name in ("0.bias", "2.weight", "2.bias", "3.bias"):
        torch.testing.assert_close(lars_params[name], sgd_params[name], rtol=1e-5, atol=1e-5)
    # The weights, by contrast, are decayed and adapted.
    assert not torch.allclose(lars_params["0.weight"], sgd_params["0.weight"])


def test_lars_trust_ratio_single_weight() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # ||w|| = 5
    w.grad = torch.tensor([[-0.3, 1.0], [0.0, -0.4]])
    opt = LARS([w], lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.001)
    opt.step()
    # d = g + 0.1 w = [[0, 1], [0, 0]], ||d|| = 1; ratio = 0.001 * 5 / 1 = 0.005;
    # mu = d * 0.005; w -= 0.5 * mu  ->  w[0, 1] = -0.0025.
    expected = torch.tensor([[3.0, -0.0025], [0.0, 4.0]])
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-7)
    # Second step with the same gradient: mu = 0.9 * mu + d * ratio', ratio' from the new w.
    w_norm = math.sqrt(9 + 0.0025**2 + 16)
    d = torch.tensor([[0.0, 1.0 - 0.00025], [0.0, 0.0]])
    ratio = 0.001 * w_norm / (1.0 - 0.00025)
    mu = 0.9 * torch.tensor([[0.0, 0.005], [0.0, 0.0]]) + ratio * d
    opt.step()
    torch.testing.assert_close(w.detach(), expected - 0.5 * mu, rtol=0, atol=1e-7)


def test_lars_zero_weight_uses_unit_trust_ratio() -> None:
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.full((2, 2), 0.5)
    LARS([w], lr=0.1, momentum=0.0).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.05))


def test_lars_state_dict_round_trip_resumes_identically() -> None:
    def make(model: nn.Module):
        opt = build_optimizer(
            model, {"name": "lars", "lr": 0.2, "lr_biases": 0.01, "weight_decay": 1e-4}
        )
        return opt, build_scheduler(opt, total_steps=10, warmup_steps=2)

    reference = _tiny_model()
    ref_opt, ref_sched = make(reference)
    for _ in range(3):
        _train_step(reference, ref_opt, ref_sched)

    model = _tiny_model()
    opt, sched = make(model)
    for _ in range(2):
        _train_step(model, opt, sched)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer)

    resumed = _tiny_model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2, sched2 = make(resumed)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert all("momentum_buffer" in s for s in opt2.state.values())
    _train_step(resumed, opt2, sched2)

    for p, q in zip(resumed.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert sched2.get_last_lr() == ref_sched.get_last_lr()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"lr": 0.1, "momentum": 1.0},
        {"lr": 0.1, "eta": 0.0},
        {"lr": 0.1, "weight_decay": -1e-6},
    ],
)
def test_lars_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LARS([nn.Parameter(torch.zeros(2, 2))], **kwargs)
