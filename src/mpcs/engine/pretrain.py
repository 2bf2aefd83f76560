"""MPCS pre-training: magnification pairs -> uniform views -> encoder + head -> NT-Xent.

One run lives in one folder ``RUN``:

* ``config.yaml`` and ``run.json``: the resolved configuration, seed, versions, git commit;
* ``metrics.jsonl``: one line per epoch (loss, lr, images/s, seconds);
* ``checkpoints/last.pt`` (every epoch) and ``checkpoints/epoch_XXXX.pt`` (every k epochs):
  model, optimiser, scheduler, epoch, global step and every RNG state, written atomically,
  so ``--resume`` continues exactly where the last checkpoint left off;
* ``pretrain_patients.txt``: the patients whose images were used (fold training part).

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=1"])
    >>> pretrain(cfg, "data/BreaKHis_v1", "runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mpcs.config import differences
from mpcs.data.breakhis import complete_samples, scan_breakhis
from mpcs.data.cache import default_cache_dir, load_images
from mpcs.data.pairs import MAGNIFICATIONS, create_pair_sampler
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.checkpoint import load_checkpoint, save_checkpoint
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.runinfo import atomic_write_text, write_run_info
from mpcs.errors import CheckpointError, ConfigError, DataError, MpcsError
from mpcs.losses import NTXentLoss
from mpcs.models import MPCSModel, create_mpcs_model

log = logging.getLogger(__name__)


class NonFiniteLossError(MpcsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available; use cpu or auto")
    return dev


def autocast_for(device: torch.device, amp: str):
    """bf16 autocast on CUDA by default; on CPU only when asked for explicitly."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def pair_samples(data_dir: str | Path, patients: Sequence[str] | None = None) -> pd.DataFrame:
    """Samples present at all four magnifications, restricted to ``patients`` if given.

    Raises :class:`DataError` when nothing is left to pre-train on, saying why.
    """
    manifest = scan_breakhis(data_dir)
    if patients is not None:
        wanted = set(map(str, patients))
        unknown = sorted(wanted - set(manifest["patient_id"]))
        if unknown:
            raise DataError(f"{data_dir}: patients not in the data set: {', '.join(unknown[:5])}")
        manifest = manifest[manifest["patient_id"].isin(wanted)]
    samples = complete_samples(manifest)
    if samples.empty:
        per_mag = manifest.groupby("magnification").size().reindex(MAGNIFICATIONS, fill_value=0)
        counts = ", ".join(f"{m} {n}" for m, n in per_mag.items())
        raise DataError(
            f"{data_dir}: no sample is present at all four magnifications, so MPCS has no pairs "
            f"to train on. A sample is (patient, sequence number) and needs one image at each "
            f"of 40X, 100X, 200X and 400X with the same sequence number; found "
            f"{len(manifest)} images of {manifest['patient_id'].nunique()} patients "
            f"({counts}) and 0 complete samples.")
    dropped = manifest["sample_key"].nunique() - len(samples)
    if dropped:
        log.info("pairs: %d samples lack a magnification and are left out of pre-training",
                 dropped)
    return samples


class PairData:
    """Decoded pixels of all four magnifications of every sample: uint8 [S, 4, 3, H, W]."""

    def __init__(self, samples: pd.DataFrame, size: int, cache_dir: str | Path | None,
                 progress: bool = True):
        paths = [p for _, row in samples.iterrows() for p in
                 (row[f"path_{m}"] for m in MAGNIFICATIONS)]
        pixels = load_images(paths, size, cache_dir=cache_dir, progress=progress)
        self.pixels = np.asarray(pixels).reshape(len(samples), 4, 3, size, size)
        self.samples = samples.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.samples)

    def views(self, index: np.ndarray, mag1: np.ndarray, mag2: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.pixels[index, mag1]),
                torch.from_numpy(self.pixels[index, mag2]))


def _rng_state(np_rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": np_rng.bit_generator.state, "torch_aug": gen.get_state(),
            "torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def _restore_rng(state: Mapping[str, Any], np_rng: np.random.Generator,
                 gen: torch.Generator) -> None:
    np_rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch_aug"])
    torch.set_rng_state(state["torch"])


def build_model(cfg: Mapping[str, Any]) -> MPCSModel:
    m = cfg["model"]
    return create_mpcs_model(m["encoder"], weights=m["weights"], head_hidden=m["head_hidden"],
                             head_out=m["head_out"], channels_last=m["channels_last"])


def _optim_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    o = dict(cfg["optim"])
    if o.pop("scale_lr_with_batch"):
        scale = cfg["train"]["batch_size"] / 256
        o["lr"] = o["lr"] * scale
        if o.get("lr_biases") is not None:
            o["lr_biases"] = o["lr_biases"] * scale
    if o.get("lr_biases") is None:
        o.pop("lr_biases", None)
    return o


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    steps = num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
    if steps == 0:
        raise ConfigError(
            f"train.batch_size={batch_size} is larger than the {num_samples} samples available "
            f"for pre-training with train.drop_last=true: no step would run. Lower the batch "
            f"size or set train.drop_last=false.")
    return steps


def _resume_state(run_dir: Path, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
        return None
    state = load_checkpoint(last)
    diff = differences(state.get("config", {}), cfg)
    if diff:
        raise CheckpointError(f"{last} was written with a different configuration; refusing to "
                              "resume. Differing keys:\n  " + "\n  ".join(diff))
    return state


def pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: str | Path,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pre-train MPCS as configured; returns a summary (epochs, steps, final loss, paths)."""
    run_dir = Path(run_dir)
    t, d = cfg["train"], cfg["data"]
    device = select_device(t["device"])
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    samples = pair_samples(data_dir, d["patients"])
    steps = steps_per_epoch(len(samples), t["batch_size"], t["drop_last"])
    state = _resume_state(run_dir, cfg) if resume else None

    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, cfg, {"data": str(data_dir), "device": str(device),
                                  "pair_samples": len(samples), "steps_per_epoch": steps})
    atomic_write_text(run_dir / "pretrain_patients.txt",
                      "\n".join(sorted(samples["patient_id"].unique())) + "\n")

    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    np_rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    cache_dir = (d["cache_dir"] or default_cache_dir()) if d["use_cache"] else None
    data = PairData(samples, d["input_size"], cache_dir, progress=progress)
    model = build_model(cfg).to(device)
    if cfg["model"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    enc = model.encoder
    aug = UniformPairAugment(AugmentConfig(**cfg["augment"]), d["input_size"],
                             mean=tuple(enc.mean), std=tuple(enc.std))
    sampler = create_pair_sampler(cfg["pairs"]["strategy"])
    loss_fn = NTXentLoss(temperature=cfg["loss"]["temperature"])
    optimizer = build_optimizer(model, _optim_cfg(cfg))
    total = steps * t["epochs"]
    scheduler = build_scheduler(optimizer, total_steps=total,
                                warmup_steps=steps * cfg["schedule"]["warmup_epochs"],
                                schedule=cfg["schedule"]["name"],
                                final_lr_fraction=cfg["schedule"]["final_lr_fraction"])
    start_epoch, global_step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], np_rng, gen)
        start_epoch, global_step = state["epoch"], state["global_step"]
        log.info("resuming %s at epoch %d (step %d)", run_dir, start_epoch + 1, global_step)

    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    last_loss = float("nan")
    for epoch in range(start_epoch, t["epochs"]):
        model.train()
        order = np_rng.permutation(len(data))
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{t['epochs']}", unit="step",
                   disable=not progress, leave=False)
        for i in bar:
            idx = order[i * t["batch_size"]:(i + 1) * t["batch_size"]]
            m1, m2 = sampler.sample(len(idx), np_rng)
            v1, v2 = data.views(idx, m1, m2)
            x1, x2 = aug(v1.to(device, non_blocking=True), v2.to(device, non_blocking=True), gen)
            x = torch.cat([x1, x2])
            if cfg["model"]["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, t["amp"]):
                _, z = model(x)
            loss = loss_fn(z[:len(idx)].float(), z[len(idx):].float())
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {global_step + 1}; "
                    f"stopped without saving this step. Last good checkpoint: "
                    f"{ckpt_dir / 'last.pt'}. Lower optim.lr or raise loss.temperature.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            global_step += 1
            seen += 2 * len(idx)
            loss_sum += loss.item()
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{rate:.0f}")
        seconds = time.perf_counter() - t0
        last_loss = loss_sum / steps
        record = {"epoch": epoch + 1, "step": global_step, "loss": last_loss,
                  "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / seconds,
                  "seconds": seconds}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{t['epochs']}  loss {last_loss:.4f}  "
                       f"lr {record['lr']:.2e}  {record['images_per_s']:.0f} img/s")
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                "global_step": global_step, "rng": _rng_state(np_rng, gen),
                "config": dict(cfg), "kind": "mpcs-pretrain"}
        save_checkpoint(ckpt, ckpt_dir / "last.pt")
        if (epoch + 1) % t["checkpoint_every"] == 0 or epoch + 1 == t["epochs"]:
            save_checkpoint(ckpt, ckpt_dir / f"epoch_{epoch + 1:04d}.pt")
    return {"run_dir": str(run_dir), "epochs": t["epochs"], "global_step": global_step,
            "final_loss": last_loss, "checkpoint": str(ckpt_dir / "last.pt"),
            "pair_samples": len(samples)}


def load_pretrained(checkpoint: str | Path) -> MPCSModel:
    """Rebuild the model of a pre-training checkpoint (config inside) with its weights."""
    state = load_checkpoint(checkpoint)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{checkpoint}: not an mpcs pre-training checkpoint "
                              "(no config/model entries)")
    cfg = dict(state["config"])
    cfg["model"] = {**cfg["model"], "weights": "none"}
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model
