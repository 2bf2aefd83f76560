"""BYOL, SimSiam, Barlow Twins and VICReg losses against their papers' definitions (written
out element by element here) and against lightly's implementations."""

from __future__ import annotations

import math

import pytest
import torch

from mpcs.core.errors import ConfigError
from mpcs.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    SimSiamLoss,
    VICRegLoss,
    create_loss,
)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_byol_matches_paper_eq2() -> None:
    p1, p2, z1, z2 = (_rand(6, 5, seed=s) for s in range(4))
    # ||p/|p| - z/|z|||^2 per sample, averaged, for both directions, summed.
    def reg(p, z):
        return sum(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum())
                   for i in range(len(p))) / len(p)
    expected = reg(p1, z2) + reg(p2, z1)
    assert float(BYOLLoss()(p1, p2, z1, z2)) == pytest.approx(expected, rel=1e-5)


def test_byol_and_simsiam_match_lightly_negative_cosine() -> None:
    from lightly.loss import NegativeCosineSimilarity

    p1, p2, z1, z2 = (_rand(8, 16, seed=s).float() for s in range(4))
    neg = NegativeCosineSimilarity()
    simsiam = 0.5 * (neg(p1, z2) + neg(p2, z1))
    assert float(SimSiamLoss()(p1, p2, z1, z2)) == pytest.approx(float(simsiam), abs=1e-5)
    byol = (2 + 2 * neg(p1, z2)) + (2 + 2 * neg(p2, z1))
    assert float(BYOLLoss()(p1, p2, z1, z2)) == pytest.approx(float(byol), abs=1e-5)


def test_simsiam_matches_paper_and_stops_gradient_of_targets() -> None:
    p1, p2 = _rand(5, 4, seed=1).requires_grad_(), _rand(5, 4, seed=2).requires_grad_()
    z1, z2 = _rand(5, 4, seed=3).requires_grad_(), _rand(5, 4, seed=4).requires_grad_()
    expected = -0.5 * sum(_cos(p1[i].detach(), z2[i].detach()) + _cos(p2[i].detach(),
                                                                       z1[i].detach())
                          for i in range(5)) / 5
    loss = SimSiamLoss()(p1, p2, z1, z2)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the projections
    assert p1.grad is not None and torch.isfinite(p1.grad).all()


def test_simsiam_minimum_at_aligned_views() -> None:
    z = _rand(4, 8)
    assert float(SimSiamLoss()(z, z, z, 3 * z)) == pytest.approx(-1.0)


def test_barlow_twins_matches_paper_definition() -> None:
    z1, z2, lam = _rand(10, 4, seed=5), _rand(10, 4, seed=6), 0.02
    n, d = z1.shape
    # standardise each dimension over the batch (biased variance, BatchNorm's eps)
    def std(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    a, b = std(z1), std(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = float(sum(a[k, i] * b[k, j] for k in range(n)) / n)
            total += (1 - c_ij) ** 2 if i == j else lam * c_ij ** 2
    assert float(BarlowTwinsLoss(lam)(z1, z2)) == pytest.approx(total, rel=1e-5)


def test_barlow_twins_matches_lightly() -> None:
    from lightly.loss import BarlowTwinsLoss as LightlyBT

    z1, z2 = _rand(32, 16, seed=7).float(), _rand(32, 16, seed=8).float()
    assert float(BarlowTwinsLoss()(z1, z2)) == pytest.approx(float(LightlyBT()(z1, z2)), rel=1e-5)


def test_barlow_twins_zero_for_identical_decorrelated_views() -> None:
    # Orthogonal standardised columns: C is the identity, the loss is ~0.
    q, _ = torch.linalg.qr(_rand(64, 8, seed=9) - _rand(64, 8, seed=9).mean(0))
    z = q - q.mean(0)
    assert float(BarlowTwinsLoss()(z, z)) < 0.05


def test_vicreg_matches_paper_definition() -> None:
    z1, z2 = _rand(9, 3, seed=10), _rand(9, 3, seed=11)
    n, d = z1.shape
    inv = float(((z1 - z2) ** 2).sum()) / (n * d)

    def var(z):
        return sum(max(0.0, 1 - math.sqrt(float(z[:, j].var(unbiased=True)) + 1e-4))
                   for j in range(d)) / d

    def cov(z):
        zc = z - z.mean(0)
        out = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    out += (float((zc[:, i] * zc[:, j]).sum()) / (n - 1)) ** 2
        return out / d

    expected = 25 * inv + 25 * 0.5 * (var(z1) + var(z2)) + 1 * (cov(z1) + cov(z2))
    assert float(VICRegLoss()(z1, z2)) == pytest.approx(expected, rel=1e-5)


def test_vicreg_matches_lightly() -> None:
    from lightly.loss import VICRegLoss as LightlyVICReg

    z1, z2 = 0.3 * _rand(32, 16, seed=12).float(), 0.3 * _rand(32, 16, seed=13).float()
    ours = VICRegLoss(lambda_inv=10, mu_var=20, nu_cov=2)(z1, z2)
    theirs = LightlyVICReg(lambda_param=10, mu_param=20, nu_param=2)(z1, z2)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_vicreg_variance_term_penalises_collapse() -> None:
    spread = _rand(32, 8, seed=14) * 2
    collapsed = torch.zeros(32, 8, dtype=torch.float64)
    loss = VICRegLoss(lambda_inv=0, nu_cov=0)
    assert float(loss(collapsed, collapsed)) == pytest.approx(25 * (1 - 0.01), rel=1e-4)
    assert float(loss(spread, spread)) < 1.0


@pytest.mark.parametrize("loss", [BarlowTwinsLoss(), VICRegLoss()])
def test_batch_statistics_losses_refuse_one_sample(loss) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 4), torch.randn(1, 4))


@pytest.mark.parametrize("loss", [BYOLLoss(), SimSiamLoss()])
def test_predictor_losses_refuse_mismatched_shapes(loss) -> None:
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 7))


def test_negative_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="lambda"):
        BarlowTwinsLoss(-1)
    with pytest.raises(ValueError, match="mu"):
        VICRegLoss(mu_var=-1)


def test_create_loss_by_name() -> None:
    assert isinstance(create_loss("vicreg", mu_var=1.0), VICRegLoss)
    with pytest.raises(ConfigError, match="unknown loss 'moco'"):
        create_loss("moco")


def test_losses_are_float32_under_bf16_autocast() -> None:
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for value in (BarlowTwinsLoss()(z1.bfloat16(), z2.bfloat16()),
                      VICRegLoss()(z1.bfloat16(), z2.bfloat16()),
                      BYOLLoss()(z1.bfloat16(), z2.bfloat16(), z1, z2)):
            assert value.dtype == torch.float32


@pytest.mark.parametrize("cls", [BarlowTwinsLoss, VICRegLoss])
def test_gather_without_process_group_is_the_local_loss(cls: type) -> None:
    """``gather_distributed`` (what torchrun runs use) changes nothing in one process; the
    2-process equality with one process on the whole batch is in
    tests/engine/test_distributed.py."""
    z1, z2 = _rand(8, 6, seed=1).float(), _rand(8, 6, seed=2).float()
    gathered = cls(gather_distributed=True)
    assert "gather_distributed=True" in repr(gathered)
    torch.testing.assert_close(gathered(z1, z2), cls()(z1, z2), rtol=0, atol=0)
