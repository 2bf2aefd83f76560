"""Where a classifier's encoder comes from, and the fine-tuned checkpoint (``best.pt``) it
goes to: :func:`init_encoder`, :func:`classifier_checkpoint`, :func:`load_finetuned`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch

from mpcs.core.checkpoint import FINETUNE_KIND, PRETRAIN_KIND, load_checkpoint, refuse_folder
from mpcs.core.errors import ConfigError
from mpcs.engine.loading import load_finetuned
from mpcs.engine.pretrain import load_pretrained
from mpcs.models import Encoder, create_encoder
from mpcs.models.classifier import Classifier

log = logging.getLogger(__name__)

#: The ``kind`` of a fine-tuned / linear-evaluation ``best.pt``.
CHECKPOINT_KIND = FINETUNE_KIND


def set_channels_last(encoder: Encoder, flag: bool) -> Encoder:
    """Put the encoder's weights (and its inputs) into channels-last memory format or not."""
    encoder.channels_last = bool(flag)
    encoder.model.to(memory_format=torch.channels_last if flag else torch.contiguous_format)
    return encoder


def _is_pretraining(state: Mapping[str, Any]) -> bool:
    """A pre-training checkpoint, also one written before checkpoints carried a ``kind``."""
    return state.get("kind") == PRETRAIN_KIND or (
        isinstance(state.get("config"), Mapping) and "model" in state
        and isinstance(state["config"].get("model"), Mapping)
        and "head_out" in state["config"]["model"])


def _named_init(kind: str, name: str, cfg: Mapping[str, Any]) -> tuple[Encoder, dict[str, Any]]:
    """``imagenet`` or ``none`` (random init from ``cfg["seed"]``)."""
    torch.manual_seed(int(cfg["seed"]))
    enc = create_encoder(name, weights=kind)
    identity = f"{kind}|{name}|{enc.weights}|timm {timm.__version__}"
    if kind == "none":
        identity += f"|seed {cfg['seed']}|torch {torch.__version__}"
    return enc, {"init": kind, "init_kind": kind, "identity": identity}


def _file_init(path: Path, text: str, name: str) -> tuple[Encoder, dict[str, Any]]:
    """The encoder of a fine-tuned or pre-training checkpoint, or an encoder state dict."""
    refuse_folder(path)  # names the checkpoint a run folder holds
    if not path.is_file():
        raise ConfigError(f"init {text!r} is neither 'imagenet', 'none' nor an existing "
                          "checkpoint file")
    state = load_checkpoint(path) if path.suffix.lower() != ".safetensors" else {}
    if state.get("kind") == CHECKPOINT_KIND:
        enc, init_kind = load_finetuned(path)[0].encoder, "mpcs-finetune"
    elif _is_pretraining(state):
        enc, init_kind = load_pretrained(path).encoder, "mpcs-pretrain"
    else:
        enc, init_kind = create_encoder(name, weights=path), "state-dict"
    del state
    if enc.name != name:
        log.warning("init %s holds a %s encoder; using it (model.encoder says %s)", path,
                    enc.name, name)
    st = path.stat()
    return enc, {"init": str(path.resolve()), "init_kind": init_kind,
                 "identity": f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{enc.name}"}


def init_encoder(init: str | os.PathLike[str], cfg: Mapping[str, Any]
                 ) -> tuple[Encoder, dict[str, Any]]:
    """The encoder to start from, and a description of where it came from.

    ``init`` is ``"imagenet"``, ``"none"`` (random init from ``cfg["seed"]``), an mpcs
    pre-training checkpoint (its own encoder, whatever ``model.encoder`` says), an mpcs
    fine-tuned checkpoint (its encoder), or a plain encoder state dict for ``model.encoder``.
    """
    name = cfg["model"]["encoder"]
    text = str(init)
    if text.strip().lower() in ("imagenet", "none"):
        enc, info = _named_init(text.strip().lower(), name, cfg)
    else:
        enc, info = _file_init(Path(init).expanduser(), text, name)
    identity = info.pop("identity")
    info.update({"encoder": enc.name, "timm_name": enc.timm_name,
                 "num_features": enc.num_features, "identity": identity})
    return set_channels_last(enc, cfg["model"]["channels_last"]), info


def classifier_checkpoint(model: Classifier, cfg: Mapping[str, Any], info: Mapping[str, Any],
                          mode: str, epoch: int, val: Any) -> dict[str, Any]:
    """The ``best.pt`` of a classifier selected at ``epoch`` with validation scores ``val``
    (an :class:`mpcs.engine.scoring.Evaluation`): everything inference needs."""
    enc = model.encoder
    return {
        "kind": CHECKPOINT_KIND,
        "mode": mode,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "encoder_name": enc.name,
        "timm_name": enc.timm_name,
        "timm_kwargs": dict(enc.timm_kwargs),
        "num_features": enc.num_features,
        "input_size": model.input_size,
        "mean": list(enc.mean),
        "std": list(enc.std),
        "class_names": list(model.class_names),
        "dropout": float(model.head.dropout.p),
        "epoch": epoch,
        "val": {"loss": val.loss, "ila": val.ila, "pla": val.pla},
        "init": info["init"],
        "init_kind": info["init_kind"],
        "config": copy.deepcopy(dict(cfg)),
    }
