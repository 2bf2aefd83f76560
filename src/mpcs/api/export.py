"""``mpcs export``: an encoder in the layout of timm's ``save_for_hf`` (``model.safetensors``,
``config.json`` and a ``README.md`` model card), so that plain timm loads it offline:
``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)``.

Example:
    >>> export_encoder("runs/op/checkpoints/last.pt", "export/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mpcs.api.hub import model_card, read_report, timm_config
from mpcs.core.checkpoint import PRETRAIN_KIND, load_checkpoint
from mpcs.core.errors import ConfigError
from mpcs.core.io import atomic_path, atomic_write_text
from mpcs.engine.loading import load_model

__all__ = ["export_encoder"]

PathLike = str | os.PathLike[str]


def _export_folder(out: Path) -> None:
    """Refuse an export folder that is, or lies under, an existing file (left untouched)."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"lies under the file {existing}"
        raise ConfigError(f"{out}: {where}; export writes model.safetensors and config.json "
                          "into a folder: give a new or existing folder as --out")


def _checkpoint_meta(path: PathLike) -> dict[str, Any]:
    """A checkpoint's records without its tensors (configuration, epoch, ...)."""
    state = load_checkpoint(path)
    return {k: v for k, v in state.items()
            if k not in ("model", "optimizer", "scheduler", "rng")}


def _patients_of(checkpoint: PathLike) -> int | None:
    """Patients a pre-training run used (its ``pretrain_patients.txt``), when beside it."""
    listing = Path(checkpoint).resolve().parent.parent / "pretrain_patients.txt"
    try:
        return len(listing.read_text().split())
    except OSError:
        return None


def export_encoder(checkpoint: PathLike, out_dir: PathLike, report: PathLike | None = None
                   ) -> Path:
    """Write the encoder in the layout of timm's ``save_for_hf``: ``out_dir/model.safetensors``
    (the timm model's state dict), ``out_dir/config.json`` (:func:`mpcs.api.hub.timm_config`:
    ``architecture``, ``num_features``, ``pretrained_cfg`` with input size, mean and std, and
    mpcs's keys ``timm_name, timm_kwargs, input_size, mean, std, source_checkpoint``) and
    ``out_dir/README.md`` (a model card: data, method, pair strategy, epochs, and the tables
    of ``report`` when given). Returns ``out_dir``.

    Load it with timm alone, offline::

        net = timm.create_model("local-dir:OUT_DIR", pretrained=True, num_classes=0)

    (``hf-hub:USER/REPO`` after an upload), and feed images resized to ``input_size``
    (bilinear, antialiased) and normalised with ``mean``/``std``.

    Raises:
        ConfigError: ``out_dir`` is, or lies under, an existing file (checked first; the file
            is left as it is), or ``report`` is missing.
        CheckpointError: an unusable checkpoint (a folder is named as one).
    """
    out = Path(out_dir)
    _export_folder(out)
    card_report = read_report(report) if report is not None else None
    loaded = load_model(checkpoint)
    enc = loaded.encoder
    state = {k: v.detach().cpu().contiguous().clone() for k, v in enc.model.state_dict().items()}
    config = timm_config(enc, loaded.input_size, checkpoint, loaded.kind)
    params = sum(int(v.numel()) for v in state.values())
    card = model_card(config, _checkpoint_meta(checkpoint), params,  # before any file is written
                      _patients_of(checkpoint) if loaded.kind == PRETRAIN_KIND else None,
                      card_report)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out}: cannot make the export folder ({e.strerror})") from None
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, tmp, metadata={"format": "pt", "timm_name": enc.timm_name})
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "README.md", card)
    return out
