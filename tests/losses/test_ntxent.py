"""Tests for the symmetric NT-Xent loss (mpcs.losses.NTXentLoss)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mpcs.losses import NTXentLoss


def _pair(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _lightly_loss(temperature: float):
    lightly_loss = pytest.importorskip("lightly.loss")
    return lightly_loss.NTXentLoss(temperature=temperature)


# --- value ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_hand_computed_two_pairs(tau: float) -> None:
    # Views u1=(1,0), u2=(0,1); partners v1=(1,1)/sqrt2, v2=(-1,1)/sqrt2 (scaled, to check
    # normalisation). Cosines: u1.v1 = u2.v1 = u2.v2 = c, u1.v2 = -c, u1.u2 = v1.v2 = 0.
    z1 = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    z2 = torch.tensor([[2.0, 2.0], [-1.0, 1.0]])
    a = (1 / math.sqrt(2)) / tau
    # anchor u1: pos v1 (a), negs u2 (0), v2 (-a)  | anchor u2: pos v2 (a), negs u1 (0), v1 (a)
    # anchor v1: pos u1 (a), negs u2 (a), v2 (0)   | anchor v2: pos u2 (a), negs u1 (-a), v1 (0)
    l_u1 = -a + math.log(math.exp(a) + 1 + math.exp(-a))
    l_u2 = -a + math.log(2 * math.exp(a) + 1)
    expected = (l_u1 + l_u2 + l_u2 + l_u1) / 4
    loss = NTXentLoss(temperature=tau)(z1, z2)
    assert loss.shape == ()
    # float32 against the float64 formula: vectorised exp/log and FMA differ by CPU
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_matches_lightly(tau: float, n: int) -> None:
    reference = _lightly_loss(tau)
    z1, z2 = _pair(n, 32, seed=n)
    ours = NTXentLoss(temperature=tau)(z1, z2)
    torch.testing.assert_close(ours, reference(z1, z2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.5])
def test_gradient_matches_lightly(tau: float) -> None:
    reference = _lightly_loss(tau)
    z1, z2 = _pair(6, 16, seed=7)
    grads = []
    for loss_fn in (NTXentLoss(temperature=tau), reference):
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        loss_fn(a, b).backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_is_symmetric_in_the_two_views() -> None:
    z1, z2 = _pair(8, 16, seed=3)
    loss_fn = NTXentLoss(temperature=0.2)
    torch.testing.assert_close(loss_fn(z1, z2), loss_fn(z2, z1))


def test_aligned_pairs_have_lower_loss_than_random_pairs() -> None:
    z1, z2 = _pair(32, 64, seed=11)
    loss_fn = NTXentLoss(temperature=0.1)
    aligned = loss_fn(z1, z1 + 0.05 * z2)
    assert aligned < loss_fn(z1, z2)


# --- precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_at_low_temperature(dtype: torch.dtype) -> None:
    z1, z2 = _pair(16, 64, seed=5)
    loss_fn = NTXentLoss(temperature=0.01)
    h1, h2 = z1.to(dtype), z2.to(dtype)
    loss = loss_fn(h1, h2)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    # Computed in float32 from the rounded inputs ...
    torch.testing.assert_close(loss, loss_fn(h1.float(), h2.float()), rtol=1e-6, atol=1e-6)
    # ... and close to the full-precision value (the inputs differ by the rounding only).
    torch.testing.assert_close(loss, loss_fn(z1, z2), rtol=2e-2, atol=0.0)
    a = h1.clone().requires_grad_(True)
    loss_fn(a, h2).backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


def test_autocast_does_not_lower_precision() -> None:
    z1, z2 = _pair(16, 64, seed=9)
    loss_fn = NTXentLoss(temperature=0.01)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = loss_fn(z1, z2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(z1, z2), rtol=1e-6, atol=1e-6)


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan")])
def test_rejects_non_positive_temperature(tau: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=tau)


@pytest.mark.parametrize(
    ("shape1", "shape2", "match"),
    [
        ((4, 8), (4, 7), "same shape"),
        ((4, 8), (5, 8), "same shape"),
        ((1, 8), (1, 8), "at least 2"),
        ((8,), (8,), "2-D"),
        ((2, 4, 8), (2, 4, 8), "2-D"),
    ],
)
def test_rejects_bad_inputs(shape1: tuple, shape2: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NTXentLoss()(torch.randn(shape1), torch.randn(shape2))


def test_gather_without_process_group_is_single_process_loss() -> None:
    z1, z2 = _pair(6, 16, seed=2)
    assert not dist.is_initialized()
    torch.testing.assert_close(
        NTXentLoss(0.1, gather_distributed=True)(z1, z2), NTXentLoss(0.1)(z1, z2)
    )


# --- distributed ------------------------------------------------------------------------------

WORLD_SIZE = 2
FULL_N = 6
TAU = 0.1


def _dist_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Compute the gathered loss on this rank's half of a fixed batch; save loss and grads."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        z1, z2 = _pair(FULL_N, 8, seed=0)
        rows = slice(rank * FULL_N // WORLD_SIZE, (rank + 1) * FULL_N // WORLD_SIZE)
        a = z1[rows].clone().requires_grad_(True)
        b = z2[rows].clone().requires_grad_(True)
        loss = NTXentLoss(TAU, gather_distributed=True)(a, b)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "g1": a.grad, "g2": b.grad}, Path(out_dir) / f"{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_distributed_gather_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(
        _dist_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD_SIZE)]

    z1, z2 = _pair(FULL_N, 8, seed=0)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = NTXentLoss(TAU)(a, b)
    full.backward()

    # The full loss is the mean over all 2*FULL_N anchors; each rank averages over its own
    # 2*FULL_N/W anchors, so the mean of the rank losses is the full loss.
    mean_loss = torch.stack([r["loss"] for r in results]).mean()
    torch.testing.assert_close(mean_loss, full.detach(), rtol=0, atol=1e-5)

    # The gather's backward sums the gradients of all ranks' losses, so rank r gets
    # d(sum_r' L_r')/dz_r = W * dL_full/dz_r. DDP then divides by W when it averages the
    # parameter gradients, which gives exactly the single-process gradient.
    half = FULL_N // WORLD_SIZE
    for rank, r in enumerate(results):
        rows = slice(rank * half, (rank + 1) * half)
        torch.testing.assert_close(r["g1"], WORLD_SIZE * a.grad[rows], rtol=0, atol=1e-5)
        torch.testing.assert_close(r["g2"], WORLD_SIZE * b.grad[rows], rtol=0, atol=1e-5)
