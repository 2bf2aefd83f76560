"""Linear evaluation of a (pre-trained) encoder: the encoder frozen AND in eval mode, so its
BatchNorm statistics never change (the authors left BN in train mode; method notes, defect 9).

The pooled features of every image are computed once, without augmentation, and cached in
``out_dir/features_<part>_<key>.npy`` (the key hashes the checkpoint, the image list and the
input size); only the dropout + linear head trains, on those features, with Adam
(``linear.*``). Selection on the validation part, the test part once, the same run folder
and records as :func:`mpcs.engine.finetune.finetune`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mpcs.core.checkpoint import save_checkpoint
from mpcs.core.io import atomic_path
from mpcs.data.cache import cache_key
from mpcs.engine.classifier_io import classifier_checkpoint
from mpcs.engine.downstream import Outcome, Prepared, batches, end_epoch, run_mode, seed_everything
from mpcs.engine.optim import build_optimizer
from mpcs.engine.parts import Part, load_pixels
from mpcs.engine.scoring import Selection, evaluate
from mpcs.models import Encoder
from mpcs.models.classifier import build_classifier
from mpcs.models.features import extract_features

log = logging.getLogger(__name__)


def linear_eval(cfg: Mapping[str, Any], train: pd.DataFrame, val: pd.DataFrame,
                test: pd.DataFrame, out_dir: str | Path, init: str | os.PathLike[str],
                progress: bool = True, class_names: Sequence[str] | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Linear evaluation: frozen encoder in eval mode, dropout + linear head trained with Adam
    (``linear.*`` settings) on cached features; select on ``val``; test once.

    Same arguments, outputs and return value as :func:`mpcs.engine.finetune.finetune`;
    ``best.pt`` holds the whole classifier (the unchanged encoder and the selected head).
    The cached features (``features_*.npy``) stay in place on ``overwrite`` and are reused.
    """
    return run_mode("linear", _linear_eval, cfg, (train, val, test), out_dir, init, progress,
                    class_names, overwrite)


def _features(encoder: Encoder, part: Part, cfg: Mapping[str, Any], info: Mapping[str, Any],
              out: Path, device: torch.device, progress: bool) -> np.ndarray:
    """Pooled features of ``part`` (encoder in eval mode, no augmentation), cached in
    ``out/features_<part>_<key>.npy``; the key hashes the checkpoint identity, the image list
    (paths, sizes, modification times) and the input size."""
    size = cfg["data"]["input_size"]
    paths = list(part.table["path"].astype(str))
    key = hashlib.sha1(f"{info['identity']}|{cache_key(paths, size)}|{size}".encode()
                       ).hexdigest()[:20]
    path = out / f"features_{part.name}_{key}.npy"
    if path.is_file():
        try:
            feats = np.load(path)
            if feats.shape == (len(part), encoder.num_features):
                log.info("linear eval: reusing cached %s features %s", part.name, path)
                return feats
        except (OSError, ValueError):
            pass
    pixels = load_pixels(part, cfg, progress)
    feats = extract_features(encoder, pixels, size, batch_size=cfg["train"]["eval_batch_size"],
                             device=device, channels_last=encoder.channels_last)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, feats)
    return feats


def _linear_eval(cfg: Mapping[str, Any], prepared: Prepared, names: tuple[str, ...],
                 progress: bool) -> Outcome:
    """:func:`linear_eval` in its prepared, locked run folder."""
    out, device, parts, encoder, info = prepared
    train_p, val_p, test_p = parts
    lin, t = cfg["linear"], cfg["train"]
    encoder = encoder.to(device).eval()
    encoder.requires_grad_(False)
    for p in (train_p, val_p):
        p.inputs = _features(encoder, p, cfg, info, out, device, progress)
    np_rng, _ = seed_everything(int(cfg["seed"]))
    model = build_classifier(encoder, cfg, names).to(device)
    model.encoder.eval()
    head = model.head
    optimizer = build_optimizer(model, {"name": "adam", "lr": lin["lr"],
                                        "weight_decay": lin["weight_decay"]})
    eval_kw = {"batch_size": max(lin["batch_size"], t["eval_batch_size"]), "device": device}
    feats = torch.from_numpy(train_p.inputs).to(device)
    labels = torch.from_numpy(train_p.labels).to(device)

    sel = Selection(t["select_by"])
    epoch = 0
    bar = tqdm(range(lin["epochs"]), desc="linear eval", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        head.train()
        loss_sum = 0.0
        for idx in batches(np_rng.permutation(len(train_p)), lin["batch_size"]):
            idx_t = torch.from_numpy(np.sort(idx)).to(device)
            loss = F.cross_entropy(head(feats[idx_t]), labels[idx_t])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
        ev = evaluate(head, val_p, **eval_kw)
        improved = sel.offer(ev, epoch + 1, head.state_dict)
        if end_epoch(out, bar, epoch, loss_sum / len(train_p), ev,
                     optimizer.param_groups[0]["lr"], t0, improved, sel.best_epoch,
                     sel.since_best, lin["patience"]):
            break
    bar.close()
    epochs_run = epoch + 1
    head.load_state_dict(sel.state)
    save_checkpoint(classifier_checkpoint(model, cfg, info, "linear", sel.best_epoch, sel.best),
                    out / "best.pt")
    # The test part goes through the encoder and the selected head once, after training.
    test_p.inputs = _features(encoder, test_p, cfg, info, out, device, progress)
    test_ev = evaluate(head, test_p, **eval_kw)
    return Outcome(test_ev, sel.best, sel.best_epoch, epochs_run, epochs_run < lin["epochs"])
