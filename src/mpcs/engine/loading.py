"""Load any mpcs checkpoint for inference: the one entry point of ``embed``, ``predict``,
``export``, ``tsne``, the report's figures and Grad-CAM.

:func:`load_model` takes a pre-training checkpoint (a run's ``last.pt`` / ``epoch_XXXX.pt``,
also one written before checkpoints carried a ``kind``) or a fine-tuned / linear-evaluation
``best.pt`` and gives a :class:`LoadedModel`: the encoder, its input size, the projection
or classifier head, the whole classifier and its class names. :func:`load_pretrained` and
:func:`load_finetuned` rebuild the model of one kind.

The checkpoint is read once, memory-mapped (its tensors are paged in while the weights are
copied into the model), and this module imports only the model code (no training loop, no
scikit-learn), so that ``mpcs predict`` on one image starts working within seconds.

Example:
    >>> loaded = load_model("runs/ft/best.pt")  # doctest: +SKIP
    >>> kept, feats, skipped = compute_features(loaded, files)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from mpcs.config import PRETRAIN_DEFAULTS, with_defaults
from mpcs.core.checkpoint import (
    FINETUNE_KIND,
    PRETRAIN_KIND,
    checkpoint_kind,
    load_checkpoint,
)
from mpcs.core.errors import CheckpointError, ConfigError
from mpcs.methods import PairMethod, create_method
from mpcs.models.classifier import Classifier
from mpcs.models.encoders import Encoder
from mpcs.models.features import file_features

__all__ = ["FINETUNE_KIND", "PRETRAIN_KIND", "LoadedModel", "compute_features",
           "load_encoder_from_checkpoint", "load_finetuned", "load_model", "load_pretrained",
           "read_state"]

PathLike = str | os.PathLike[str]


@dataclass
class LoadedModel:
    """What a checkpoint gives for inference.

    Attributes:
        kind: ``"mpcs-pretrain"`` or ``"mpcs-finetune"``.
        encoder: the backbone (eval mode, CPU); ``encoder.input_size[-1]`` is the input side.
        input_size: side of the square input the model was trained at.
        head: the projection head (pre-training) or the classifier head (fine-tuned).
        classifier: the whole fine-tuned classifier (None for pre-training checkpoints).
        class_names: output classes of the classifier (empty for pre-training checkpoints).
        path: the checkpoint file.
    """

    kind: str
    encoder: Encoder
    input_size: int
    head: torch.nn.Module | None
    classifier: torch.nn.Module | None
    class_names: list[str] = field(default_factory=list)
    path: Path = Path()


def read_state(path: PathLike) -> dict[str, Any]:
    """A checkpoint's entries with its tensors memory-mapped (read when used), through
    :func:`mpcs.core.checkpoint.load_checkpoint` (and its one-line refusals) where the file
    cannot be mapped."""
    path = Path(path)
    if path.is_file():
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(state, dict):
                return state
        except Exception:  # noqa: BLE001 - any failure: the full reader says what it is
            pass
    return load_checkpoint(path)


def load_pretrained(path: PathLike, state: dict[str, Any] | None = None) -> PairMethod:
    """Rebuild the method of a pre-training checkpoint (its configuration inside) with its
    weights: ``.encoder`` and ``.head``; ``state``: the checkpoint already read.

    Raises:
        CheckpointError: no ``config``/``model`` entries, or weights that do not fit.
    """
    state = read_state(path) if state is None else state
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not an mpcs pre-training checkpoint "
                              "(no config/model entries)")
    cfg = with_defaults(state["config"], PRETRAIN_DEFAULTS)  # keys added to mpcs since
    cfg["model"] = {**cfg["model"], "weights": "none"}
    model = create_method(cfg.get("method", "mpcs"), cfg)
    model.load_state_dict(state["model"])
    norm = state.get("encoder_norm")
    if norm:
        model.encoder.mean = tuple(float(v) for v in norm["mean"])
        model.encoder.std = tuple(float(v) for v in norm["std"])
    return model


def load_finetuned(path: PathLike, state: dict[str, Any] | None = None
                   ) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the classifier of a ``best.pt`` (no config file needed), in eval mode on the
    CPU. Returns ``(model, meta)``; ``meta`` is the checkpoint without the weights.

    Raises:
        CheckpointError: not a fine-tuned checkpoint, or one that cannot be rebuilt.
    """
    state = read_state(path) if state is None else state
    if state.get("kind") != FINETUNE_KIND:
        raise CheckpointError(f"{path}: not an mpcs fine-tuned checkpoint "
                              f"(kind {state.get('kind')!r}, expected {FINETUNE_KIND!r})")
    try:
        net = timm.create_model(state["timm_name"], pretrained=False, num_classes=0,
                                **dict(state["timm_kwargs"]))
        size = int(state["input_size"])
        encoder = Encoder(net, name=state["encoder_name"], timm_name=state["timm_name"],
                          timm_kwargs=state["timm_kwargs"], mean=tuple(state["mean"]),
                          std=tuple(state["std"]), input_size=(3, size, size),
                          weights=str(path))
        model = Classifier(encoder, state["class_names"], dropout=float(state["dropout"]),
                           input_size=size)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the fine-tuned model ({e})") from None
    meta = {k: v for k, v in state.items() if k != "model"}
    return model.eval(), meta


def _channels_last(encoder: Encoder) -> Encoder:
    """Weights and inputs in channels-last memory format: the fast one for inference."""
    encoder.channels_last = True
    encoder.model.to(memory_format=torch.channels_last)
    return encoder


def load_model(path: PathLike) -> LoadedModel:
    """Load a pre-training checkpoint or a fine-tuned ``best.pt`` for inference (CPU, eval;
    the encoder's weights in channels-last memory format).

    Raises:
        CheckpointError: missing or unreadable file, a folder, or not an mpcs checkpoint
            (names it).
    """
    path = Path(path)
    state = read_state(path)
    kind = checkpoint_kind(state)
    if kind == FINETUNE_KIND:
        model, meta = load_finetuned(path, state)
        size = int(meta["input_size"])
        return LoadedModel(FINETUNE_KIND, _channels_last(model.encoder.eval()), size,
                           model.head, model, list(model.class_names), path)
    if kind == PRETRAIN_KIND:
        try:
            size = int(state["config"]["data"]["input_size"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: pre-training checkpoint without "
                                  "config data.input_size") from None
        try:
            model = load_pretrained(path, state).eval()
        except (KeyError, RuntimeError, ConfigError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the pre-trained model ({e})") from None
        encoder = _channels_last(model.encoder)
        encoder.input_size = (3, size, size)
        return LoadedModel(PRETRAIN_KIND, encoder, size, model.head, None, [], path)
    raise CheckpointError(f"{path}: not an mpcs checkpoint (kind {state.get('kind')!r}; "
                          "expected a pre-training checkpoint or a fine-tuned best.pt)")


def load_encoder_from_checkpoint(path: PathLike) -> Encoder:
    """The encoder of a pre-training checkpoint or of a fine-tuned ``best.pt`` (eval, CPU);
    its ``input_size`` is the one the checkpoint was trained at."""
    return load_model(path).encoder


def compute_features(loaded: LoadedModel, files: Sequence[PathLike], projection: bool = False,
                     batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
                     device: str | torch.device = "cpu", workers: int | None = None,
                     amp: str = "off") -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:
    """Pooled backbone features (or, with ``projection``, the projection head's output) of
    ``files`` (:func:`mpcs.models.features.file_features`). Returns ``(kept files,
    float32 [N, D], skipped (path, reason))``.

    Raises:
        ConfigError: ``projection`` with a checkpoint that has no projection head.
    """
    head = None
    if projection:
        if loaded.kind != PRETRAIN_KIND or loaded.head is None:
            raise ConfigError(f"{loaded.path}: projection features need a pre-training "
                              "checkpoint (a fine-tuned model has no projection head)")
        head = loaded.head
    return file_features(loaded.encoder, files, head, loaded.input_size, batch_size, skip_bad,
                         progress, device, workers, amp)
