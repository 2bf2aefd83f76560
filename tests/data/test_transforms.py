"""Tests for mpcs.data.transforms: the uniform pair transformation T_U and its batched ops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from mpcs.core.errors import ConfigError
from mpcs.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    PairParams,
    UniformPairAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    eval_transform,
    flip_rotate,
    normalize,
    rotate_translate,
    sample_params,
)

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
GEOMETRY_ONLY = AugmentConfig(**NO_COLOUR, hflip=0.5, vflip=0.5, rot90=True,
                              rotation_degrees=20.0, translate=0.1)
IDENTITY_NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than several (no thread wake-ups)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_uint8(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen(seed))


def asymmetric_image(size: int = 24) -> torch.Tensor:
    """A float image in [0, 1] with no flip or rotation symmetry (a ramp plus a corner mark)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    img = torch.stack([xx / (size - 1), yy / (size - 1),
                       ((xx + 2 * yy) % 7) / 6.0])
    img[:, 2:6, 3:5] = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)
    return img


def params(n: int, **values: torch.Tensor) -> PairParams:
    """Identity parameters for ``n`` images, with some fields replaced."""
    base = dict(brightness=torch.ones(n), contrast=torch.ones(n), saturation=torch.ones(n),
                hue=torch.zeros(n), hflip=torch.zeros(n, dtype=torch.bool),
                vflip=torch.zeros(n, dtype=torch.bool), rot90=torch.zeros(n, dtype=torch.long),
                angle=torch.zeros(n), shift=torch.zeros(n, 2))
    base.update(values)
    return PairParams(**base)


# --------------------------------------------------------------------------- uniform pairs


@pytest.mark.parametrize("cfg", [AugmentConfig(), GEOMETRY_ONLY,
                                 AugmentConfig(hue=0.5, rotation_degrees=180, translate=0.4)])
def test_same_image_as_both_views_gives_identical_outputs(cfg: AugmentConfig) -> None:
    # The paper's uniform transformation: one parameter set for both views (defect 5 of the
    # authors' code drew them independently, so the two outputs differed).
    aug = UniformPairAugment(cfg, input_size=16)
    x = rand_uint8(12, 24)
    a, b = aug(x, x.clone(), gen(3))
    assert torch.equal(a, b)


def test_two_different_views_get_the_same_geometry() -> None:
    # view2 is view1 with inverted colours. All geometric ops (flips, rot90, bilinear warp with
    # reflected borders, antialiased resize) commute with x -> 1 - x, so with colour jitter off
    # and no normalisation out2 == 1 - out1 exactly when the SAME parameters are used; with
    # independent flips/rotations per view this fails for most pairs.
    img = asymmetric_image(24)
    n = 16
    view1 = img.expand(n, 3, 24, 24).clone()
    view2 = 1.0 - view1
    aug = UniformPairAugment(GEOMETRY_ONLY, input_size=20, **IDENTITY_NORM)
    out1, out2 = aug(view1, view2, gen(5))
    torch.testing.assert_close(out2, 1.0 - out1, atol=1e-5, rtol=0)
    # The test has teeth: the outputs vary across the batch (different geometry per pair).
    assert not torch.allclose(out1[0], out1[1:], atol=1e-3)


def test_independent_view_parameters_would_be_detected() -> None:
    # Sanity check of the test above: shuffle the second view's parameters and the identity
    # out2 == 1 - out1 breaks.
    img = asymmetric_image(24)
    n = 16
    x = img.expand(n, 3, 24, 24).clone()
    aug = UniformPairAugment(GEOMETRY_ONLY, input_size=20, **IDENTITY_NORM)
    p = sample_params(GEOMETRY_ONLY, n, gen(5))
    q = PairParams(**{k: None if v is None else v.roll(1, 0) for k, v in vars(p).items()})
    out1, out2 = aug.apply(x, p), aug.apply(1.0 - x, q)
    assert not torch.allclose(out2, 1.0 - out1, atol=1e-3)


def test_pairs_in_a_batch_get_different_parameters() -> None:
    aug = UniformPairAugment(AugmentConfig(), input_size=16)
    one = rand_uint8(1, 24, seed=1)
    x = one.expand(8, 3, 24, 24).clone()
    a, b = aug(x, x, gen(0))
    assert torch.equal(a, b)
    distinct = {tuple(a[i].flatten()[:64].tolist()) for i in range(8)}
    assert len(distinct) >= 6  # identical inputs, different outputs per batch position
    p = sample_params(AugmentConfig(), 64, gen(0))
    for field in ("brightness", "contrast", "saturation", "hue", "angle"):
        assert getattr(p, field).unique().numel() == 64
    assert p.hflip.any() and not p.hflip.all()
    assert p.vflip.any() and not p.vflip.all()
    assert set(p.rot90.tolist()) == {0, 1, 2, 3}


def test_params_are_in_the_configured_ranges() -> None:
    cfg = AugmentConfig(brightness=0.3, contrast=0.2, saturation=0.1, hue=0.05,
                        rotation_degrees=10.0, translate=0.04)
    p = sample_params(cfg, 2000, gen(1))
    for field, lo, hi in [("brightness", 0.7, 1.3), ("contrast", 0.8, 1.2),
                          ("saturation", 0.9, 1.1), ("hue", -0.05, 0.05),
                          ("angle", -10.0, 10.0), ("shift", -0.04, 0.04)]:
        v = getattr(p, field)
        assert v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6, field
        assert v.max() - v.min() > 0.8 * (hi - lo), field  # the whole range is used
    assert p.shift.shape == (2000, 2)
    assert 0.45 < p.hflip.float().mean() < 0.55
    assert 0.45 < p.vflip.float().mean() < 0.55
    off = sample_params(AugmentConfig(hflip=0.0, vflip=1.0, rot90=False), 100, gen(1))
    assert not off.hflip.any() and off.vflip.all() and (off.rot90 == 0).all()


def test_all_operations_off_is_resize_and_normalise_only() -> None:
    cfg = AugmentConfig(**NO_COLOUR, hflip=0.0, vflip=0.0, rot90=False, rotation_degrees=0.0,
                        translate=0.0)
    x = rand_uint8(4, 16)
    a, b = UniformPairAugment(cfg, input_size=16)(x, x, gen(0))
    expected = normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(a, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(b, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [32, 17])
def test_output_shape_dtype_and_normalisation(size: int) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    aug = UniformPairAugment(AugmentConfig(), input_size=size, mean=mean, std=std)
    x = rand_uint8(5, 40)
    a, b = aug(x, rand_uint8(5, 40, seed=9), gen(0))
    for out in (a, b):
        assert out.shape == (5, 3, size, size)
        assert out.dtype == torch.float32
        # Un-normalising gives values in [0, 1] (the ops keep pixels in range).
        raw = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_normalisation_uses_given_mean_and_std() -> None:
    cfg = AugmentConfig(**NO_COLOUR, hflip=0.0, vflip=0.0, rot90=False, rotation_degrees=0.0,
                        translate=0.0)
    x = torch.full((2, 3, 8, 8), 0.5)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.1)
    a, _ = UniformPairAugment(cfg, input_size=8, mean=mean, std=std)(x, x, gen(0))
    expected = [(0.5 - m) / s for m, s in zip(mean, std, strict=True)]
    for c in range(3):
        torch.testing.assert_close(a[:, c], torch.full((2, 8, 8), expected[c]))


def test_views_of_different_shapes_are_rejected() -> None:
    aug = UniformPairAugment(AugmentConfig(), input_size=16)
    with pytest.raises(ValueError, match="same shape"):
        aug(rand_uint8(2, 24), rand_uint8(3, 24), gen(0))


def test_same_generator_seed_reproduces_outputs() -> None:
    aug = UniformPairAugment(AugmentConfig(), input_size=16)
    v1, v2 = rand_uint8(6, 24, 1), rand_uint8(6, 24, 2)
    a1, b1 = aug(v1, v2, gen(42))
    a2, b2 = aug(v1, v2, gen(42))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a3, _ = aug(v1, v2, gen(43))
    assert not torch.allclose(a1, a3)


def test_uint8_and_float_inputs_give_the_same_result() -> None:
    aug = UniformPairAugment(AugmentConfig(), input_size=16)
    v1, v2 = rand_uint8(6, 24, 1), rand_uint8(6, 24, 2)
    a1, b1 = aug(v1, v2, gen(7))
    a2, b2 = aug(v1.float() / 255, v2.float() / 255, gen(7))
    torch.testing.assert_close(a1, a2, atol=1e-5, rtol=0)
    torch.testing.assert_close(b1, b2, atol=1e-5, rtol=0)


def test_inputs_are_not_modified() -> None:
    aug = UniformPairAugment(AugmentConfig(), input_size=16)
    v1 = torch.rand(4, 3, 16, 16, generator=gen(1))
    v2 = torch.rand(4, 3, 16, 16, generator=gen(2))
    c1, c2 = v1.clone(), v2.clone()
    aug(v1, v2, gen(0))
    assert torch.equal(v1, c1) and torch.equal(v2, c2)


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "change",
    [dict(brightness=1.0), dict(brightness=-0.1), dict(contrast=1.5), dict(saturation=-0.01),
     dict(hue=0.51), dict(hue=-0.1), dict(hflip=1.1), dict(vflip=-0.5),
     dict(rotation_degrees=181.0), dict(rotation_degrees=-1.0), dict(translate=0.5),
     dict(translate=-0.01)],
)
def test_augment_config_rejects_out_of_range_values(change: dict) -> None:
    cfg = dataclasses.replace(AugmentConfig(), **change)
    name = next(iter(change))
    with pytest.raises(ConfigError, match=f"augment.{name}"):
        cfg.validate()
    with pytest.raises(ConfigError):
        UniformPairAugment(cfg, input_size=16)


@pytest.mark.parametrize(
    "change",
    [dict(), dict(brightness=0.0, hue=0.5, hflip=1.0, vflip=0.0, rotation_degrees=180.0),
     dict(contrast=0.99, translate=0.49, rotation_degrees=0.0, rot90=False)],
)
def test_augment_config_accepts_boundary_values(change: dict) -> None:
    dataclasses.replace(AugmentConfig(), **change).validate()


def test_input_size_too_small_is_rejected() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        UniformPairAugment(AugmentConfig(), input_size=4)


# --------------------------------------------------------------------------- colour ops


def _against_torchvision(ours, theirs, factors: list[float], atol: float) -> None:
    x = torch.rand(len(factors), 3, 12, 10, generator=gen(11))
    # Include saturated pixels, grays and pure colours (edge cases of the HSV conversion).
    x[:, :, 0, :3] = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]).T
    x[:, :, 1, :3] = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.9, 0.9], [0.0, 0.0, 1.0]]).T
    f = torch.tensor(factors)
    out = ours(x.clone(), f)
    ref = torch.stack([theirs(x[i], factors[i]) for i in range(len(factors))])
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)


FACTORS = [0.0, 0.6, 1.0, 1.25, 1.4, 2.0]


def test_brightness_matches_torchvision() -> None:
    _against_torchvision(adjust_brightness, TF.adjust_brightness, FACTORS, 1e-5)


def test_contrast_matches_torchvision() -> None:
    _against_torchvision(adjust_contrast, TF.adjust_contrast, FACTORS, 1e-5)


def test_saturation_matches_torchvision() -> None:
    _against_torchvision(adjust_saturation, TF.adjust_saturation, FACTORS, 1e-5)


def test_hue_matches_torchvision() -> None:
    _against_torchvision(adjust_hue, TF.adjust_hue, [-0.5, -0.3, -0.05, 0.0, 0.1, 0.5], 1e-4)


def test_colour_ops_use_a_different_factor_per_image() -> None:
    x = torch.rand(1, 3, 8, 8, generator=gen(2)).expand(3, 3, 8, 8).clone()
    out = adjust_brightness(x.clone(), torch.tensor([0.5, 1.0, 0.5]))
    assert torch.equal(out[0], out[2]) and not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out[1], x[1])


def test_contrast_mean_is_per_image() -> None:
    # Each image is blended with ITS OWN gray mean, not the batch mean.
    dark = torch.full((3, 4, 4), 0.1)
    dark[:, 0, 0] = 0.3
    bright = torch.full((3, 4, 4), 0.8)
    x = torch.stack([dark, bright])
    f = torch.tensor([0.5, 0.5])
    out = adjust_contrast(x.clone(), f)
    torch.testing.assert_close(out[0], TF.adjust_contrast(dark, 0.5))
    torch.testing.assert_close(out[1], TF.adjust_contrast(bright, 0.5))
    torch.testing.assert_close(out[1], bright, atol=1e-4, rtol=0)  # uniform: ~unchanged


# --------------------------------------------------------------------------- geometry


def test_flips_and_rot90_match_torch() -> None:
    x = torch.rand(8, 3, 6, 6, generator=gen(4))
    hflip = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    vflip = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    rot = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = flip_rotate(x, params(8, hflip=hflip, vflip=vflip, rot90=rot))
    for i in range(8):
        ref = x[i]
        if hflip[i]:
            ref = torch.flip(ref, dims=(-1,))
        if vflip[i]:
            ref = torch.flip(ref, dims=(-2,))
        ref = torch.rot90(ref, int(rot[i]), dims=(-2, -1))
        assert torch.equal(out[i], ref), i


def test_rot90_turns_counter_clockwise() -> None:
    # A mark at the top-right ends up at the top-left after one turn (as torch/np.rot90).
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 4] = 1.0
    out = flip_rotate(x, params(1, rot90=torch.tensor([1])))
    assert out[0, 0, 0, 0] == 1.0 and out.sum() == 1.0


def test_hflip_mirrors_left_right() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 0] = 1.0
    out = flip_rotate(x, params(1, hflip=torch.tensor([True])))
    assert out[0, 0, 1, 3] == 1.0 and out.sum() == 1.0


def test_rotate_translate_zero_is_identity() -> None:
    x = torch.rand(3, 3, 10, 10, generator=gen(5))
    assert torch.equal(rotate_translate(x, torch.zeros(3), torch.zeros(3, 2)), x)
    # In a mixed batch the untouched images stay (numerically) the same.
    out = rotate_translate(x, torch.tensor([0.0, 10.0, 0.0]),
                           torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0]]))
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    assert not torch.allclose(out[1], x[1], atol=1e-3)


def test_rotate_90_degrees_matches_rot90_counter_clockwise() -> None:
    # Observed direction: positive angles turn the image counter-clockwise on screen (y axis
    # pointing down), i.e. rotate_translate(x, 90) == torch.rot90(x, 1, dims=(-2, -1)),
    # which is also torchvision's convention for rotate().
    x = torch.rand(2, 3, 16, 16, generator=gen(6))
    out = rotate_translate(x, torch.tensor([90.0, -90.0]), torch.zeros(2, 2))
    inner = (slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(out[0][inner], torch.rot90(x[0], 1, dims=(-2, -1))[inner],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1][inner], torch.rot90(x[1], -1, dims=(-2, -1))[inner],
                               atol=1e-5, rtol=0)


def test_small_rotation_matches_torchvision_inside_the_image() -> None:
    x = torch.rand(1, 3, 24, 24, generator=gen(7))
    out = rotate_translate(x, torch.tensor([20.0]), torch.zeros(1, 2))[0]
    ref = TF.rotate(x[0], 20.0, interpolation=TF.InterpolationMode.BILINEAR)
    yy, xx = torch.meshgrid(torch.arange(24.0) - 11.5, torch.arange(24.0) - 11.5,
                            indexing="ij")
    disc = yy ** 2 + xx ** 2 < 9.0 ** 2  # away from the corners filled by the border rule
    torch.testing.assert_close(out[:, disc], ref[:, disc], atol=1e-4, rtol=0)


def test_translate_moves_content_right_and_down_by_a_fraction_of_the_size() -> None:
    x = torch.rand(2, 3, 16, 16, generator=gen(8))
    out = rotate_translate(x, torch.zeros(2), torch.tensor([[0.25, 0.0], [0.0, 0.125]]))
    # +0.25 of the width: 4 pixels to the right; +0.125 of the height: 2 pixels down.
    torch.testing.assert_close(out[0, :, :, 4:], x[0, :, :, :-4], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :, 2:, :], x[1, :, :-2, :], atol=1e-5, rtol=0)


def test_warp_borders_are_reflected_not_black() -> None:
    x = torch.rand(1, 3, 16, 16, generator=gen(9)) * 0.5 + 0.5  # no dark pixels
    out = rotate_translate(x, torch.tensor([15.0]), torch.tensor([[0.05, -0.05]]))
    assert out.min() > 0.45


# --------------------------------------------------------------------------- evaluation


def test_eval_transform_is_deterministic_and_normalised() -> None:
    x = rand_uint8(3, 40)
    a = eval_transform(x, 24)
    b = eval_transform(x.clone(), 24)
    assert torch.equal(a, b)
    assert a.shape == (3, 3, 24, 24) and a.dtype == torch.float32
    same = eval_transform(rand_uint8(3, 24), 24, mean=(0.0,) * 3, std=(1.0,) * 3)
    torch.testing.assert_close(same, rand_uint8(3, 24).float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(eval_transform(x.float() / 255, 24), a, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- fused pipeline


@pytest.mark.parametrize("cfg", [AugmentConfig(), GEOMETRY_ONLY,
                                 AugmentConfig(hue=0.5, rotation_degrees=180, translate=0.4),
                                 AugmentConfig(**NO_COLOUR, rotation_degrees=0.0,
                                               translate=0.0)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_fused_pipeline_equals_the_step_by_step_operations(cfg: AugmentConfig,
                                                           dtype: torch.dtype) -> None:
    # The batch path folds flips and quarter turns into the warp and blends in place; it
    # must give what the documented operations give one after the other.
    size = 20
    x = rand_uint8(8, 24, 5)
    x = x if dtype == torch.uint8 else x.float() / 255
    before = x.clone()
    p = sample_params(cfg, 8, gen(3))
    out = UniformPairAugment(cfg, size).apply(x, p)
    ref = x.float() / 255 if dtype == torch.uint8 else x
    ref = adjust_brightness(ref, p.brightness)
    ref = adjust_contrast(ref, p.contrast)
    ref = adjust_saturation(ref, p.saturation)
    ref = adjust_hue(ref, p.hue) if bool((p.hue != 0).any()) else ref
    ref = rotate_translate(flip_rotate(ref, p), p.angle, p.shift)
    ref = torch.nn.functional.interpolate(ref, size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)
    ref = normalize(ref, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert torch.equal(x, before)


def test_cpu_chunks_on_a_helper_thread_give_the_same_result() -> None:
    # With several torch threads the CPU path runs its chunks on a one-thread helper; the
    # result must not depend on the thread count or the chunk size.
    import mpcs.data.transforms as T

    aug = UniformPairAugment(AugmentConfig(), 16)
    x = rand_uint8(10, 24, 9)
    p = sample_params(AugmentConfig(), 10, gen(4))
    whole = aug.apply(x, p)  # 1 thread (module fixture), one chunk
    before, chunk = torch.get_num_threads(), T.CPU_CHUNK_PIXELS
    try:
        T.CPU_CHUNK_PIXELS = 3 * 24 * 24  # chunks of 3 views
        torch.set_num_threads(2)
        threaded = aug.apply(x, p)
        torch.set_num_threads(1)
        chunked = aug.apply(x, p)
    finally:
        torch.set_num_threads(before)
        T.CPU_CHUNK_PIXELS = chunk
    assert torch.get_num_threads() == before
    # Normalised values reach about 2.6: float rounding of a different chunking or thread
    # count moves them by a few ulps (1.07e-6 seen on a 2-core VM).
    torch.testing.assert_close(threaded, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
