"""The uniform stochastic transformation T_U, applied to whole batches of pairs.

The package: :mod:`~mpcs.data.transforms.params` (strengths, one parameter set per pair),
:mod:`~mpcs.data.transforms.colour`, :mod:`~mpcs.data.transforms.geometry`,
:mod:`~mpcs.data.transforms.augment` (the batch transformation, evaluation pre-processing) and
:mod:`~mpcs.data.transforms.finetune` (the per-image augmentation of fine-tuning).

MPCS samples ONE set of augmentation parameters per pair and applies it to both views, so the
only difference between the views is the magnification (the authors' code meant to do this
but drew the two views' parameters independently; method notes, defect 5). Parameters are
drawn per pair, so a batch of N pairs uses N parameter sets; each set is used twice.

The operations follow torchvision's definitions (``torchvision.transforms.v2.functional``:
``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, flips,
``rotate``, ``affine``) but take a different parameter for each image of the batch, which
torchvision's batch transforms do not (they share one draw across the whole batch). The
tests check each operation against torchvision on single images.

Two options let the views differ in colour while the geometry stays shared (for real
images, where both views of a pair come from one slide with one stain, identical colours
let colour statistics alone identify a pair):

* ``hed``: H&E stain jitter in HED space (Tellez et al., IEEE TMI 2018; Med. Image Anal.
  2019): the optical density of each of haematoxylin, eosin and DAB is scaled by
  ``U(1 - hed, 1 + hed)`` and shifted by ``U(-hed, hed)``;
* ``per_view_colour``: colour jitter and stain jitter drawn for each view on its own; the
  flips, rotations and translation are still one draw per pair.

Order: stain jitter, colour jitter (brightness, contrast, saturation, hue; a fixed order
where torchvision's ColorJitter shuffles it per call), horizontal/vertical flip,
90-degree rotation, small rotation plus translation (one bilinear warp, reflected borders),
resize to the input size, normalisation.

Example:
    >>> aug = UniformPairAugment(AugmentConfig(), input_size=64)
    >>> v1 = v2 = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8)
    >>> a, b = aug(v1, v2, torch.Generator().manual_seed(0))
    >>> bool(torch.equal(a, b))
    True
"""

from mpcs.data.transforms.augment import (
    CPU_CHUNK_PIXELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    UniformPairAugment,
    eval_transform,
    normalize,
    to_float,
)
from mpcs.data.transforms.colour import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    colour_jitter,
    hed_jitter,
)
from mpcs.data.transforms.finetune import FinetuneAugment, random_resized_crop
from mpcs.data.transforms.geometry import crop_resize, flip_rotate, resize, rotate_translate
from mpcs.data.transforms.params import AugmentConfig, PairParams, sample_params
from mpcs.data.transforms.tta import TTA_KINDS, tta_views

__all__ = ["CPU_CHUNK_PIXELS", "HED_FROM_RGB", "IMAGENET_MEAN", "IMAGENET_STD", "RGB_FROM_HED",
           "TTA_KINDS", "AugmentConfig", "FinetuneAugment", "PairParams", "UniformPairAugment",
           "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation",
           "colour_jitter", "crop_resize", "eval_transform", "flip_rotate", "hed_jitter",
           "normalize", "random_resized_crop", "resize", "rotate_translate", "sample_params",
           "to_float", "tta_views"]
