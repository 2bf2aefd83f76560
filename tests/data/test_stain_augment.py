"""Views that differ in colour while their geometry is shared: H&E stain jitter in HED space
and per-view colour draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2hed

from mpcs.config import resolve
from mpcs.core.errors import ConfigError
from mpcs.data.transforms import (
    HED_FROM_RGB,
    AugmentConfig,
    UniformPairAugment,
    hed_jitter,
    sample_params,
)

IDENTITY_NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def tissue(n: int = 4, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Pinkish-purple float images in [0.2, 0.95], like H&E tissue."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.75, 0.45, 0.70]).view(1, 3, 1, 1)
    return (base + 0.2 * (torch.rand(n, 3, size, size, generator=g) - 0.5)).clamp(0.2, 0.95)


def test_stain_separation_is_scikit_images() -> None:
    img = tissue(1)[0].permute(1, 2, 0).double().numpy()
    ours = -np.log(img) @ HED_FROM_RGB.numpy()
    # scikit-image divides the optical density by -ln(1e-6) and clips at 0
    theirs = rgb2hed(img) * -np.log(1e-6)
    positive = theirs > 0
    assert positive.mean() > 0.3
    np.testing.assert_allclose(ours[positive], theirs[positive], rtol=1e-6, atol=1e-9)


def test_neutral_stain_jitter_is_the_identity() -> None:
    x = tissue()
    out = hed_jitter(x, torch.ones(4, 3), torch.zeros(4, 3))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_more_haematoxylin_darkens_and_blues_the_image() -> None:
    x = tissue(1)
    more_h = hed_jitter(x, torch.tensor([[1.5, 1.0, 1.0]]), torch.zeros(1, 3))
    assert float(more_h.mean()) < float(x.mean())
    # haematoxylin absorbs red most: red falls more than blue
    drop = (x - more_h).mean(dim=(0, 2, 3))
    assert drop[0] > drop[2] > 0


def test_per_view_colour_gives_views_different_colours_and_the_same_geometry() -> None:
    cfg = AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, hed=0.1,
                        per_view_colour=True, rotation_degrees=20.0, translate=0.1)
    aug = UniformPairAugment(cfg, 24, **IDENTITY_NORM)
    # an image whose geometry shows: a bright square in one corner of flat tissue
    x = torch.full((8, 3, 24, 24), 0.5)
    x[:, :, 2:8, 3:9] = 0.95
    a, b = aug(x, x.clone(), torch.Generator().manual_seed(3))
    colour_a, colour_b = a.mean(dim=(2, 3)), b.mean(dim=(2, 3))
    assert (colour_a - colour_b).abs().max() > 0.02  # colours differ
    # the same spatial pattern: per-image standardised maps agree
    def pattern(v: torch.Tensor) -> torch.Tensor:
        g = v.mean(dim=1)
        return (g - g.mean(dim=(1, 2), keepdim=True)) / g.std(dim=(1, 2), keepdim=True)
    corr = (pattern(a) * pattern(b)).mean(dim=(1, 2))
    assert bool((corr > 0.95).all()), corr


def test_uniform_transform_stays_uniform_with_stain_jitter() -> None:
    cfg = AugmentConfig(hed=0.1)  # per_view_colour off: one draw per pair (the paper's T_U)
    aug = UniformPairAugment(cfg, 24, **IDENTITY_NORM)
    x = tissue(6)
    a, b = aug(x, x.clone(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_new_options_do_not_change_the_draws_of_old_ones() -> None:
    old = sample_params(AugmentConfig(), 5, torch.Generator().manual_seed(0))
    new = sample_params(AugmentConfig(hed=0.2, per_view_colour=True), 5,
                        torch.Generator().manual_seed(0))
    for name in ("brightness", "contrast", "saturation", "hue", "hflip", "rot90", "angle",
                 "shift"):
        assert torch.equal(getattr(old, name), getattr(new, name)), name
    assert old.hed_scale is None and new.hed_scale is not None and new.second is not None
    shard = new.take(1, 3)
    assert len(shard) == 2 and len(shard.second) == 2
    torch.testing.assert_close(shard.second.brightness, new.second.brightness[1:3])


@pytest.mark.parametrize("value", ["-0.1", "1.0", ".inf"])
def test_stain_strength_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="augment.hed"):
        resolve(overrides=[f"augment.hed={value}"])
