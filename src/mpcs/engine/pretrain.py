"""MPCS pre-training: magnification pairs -> uniform views -> encoder + head -> NT-Xent.

One run lives in one folder ``RUN``:

* ``config.yaml`` and ``run.json``: the resolved configuration, seed, versions, git commit;
* ``metrics.jsonl``: one line per epoch (loss, lr, images/s, seconds, skipped_steps);
* ``checkpoints/last.pt`` (every epoch) and ``checkpoints/epoch_XXXX.pt`` (every k epochs):
  model, optimiser, scheduler, epoch, global step and every RNG state, written atomically,
  so ``--resume`` continues exactly where the last checkpoint left off;
* ``pretrain_patients.txt``: the patients whose images were used (fold training part);
* ``skipped_images.csv`` (with ``data.on_bad_image=skip``): every image left out, with the
  stage that found it (``scan``: header check; ``decode``: full decode in the image cache)
  and the reason. A sample loses its pairs when any of its four images is left out.

Nothing lost, nothing leaked:

* The output folder is checked before any work and created (and locked against a second
  process) before the images are decoded; failing to write it is a clear
  :class:`OutputError`.
* A bad image stops the run with one line naming the file (``data.on_bad_image=error``) or
  is left out and listed (``skip``).
* A non-finite loss or gradient never reaches the weights: ``train.on_nonfinite=stop``
  stops before the optimiser step, naming epoch and step, keeping the last good
  checkpoint; ``skip`` skips that optimiser step (the learning-rate schedule still advances),
  logs and counts it (``skipped_steps`` in ``metrics.jsonl``), and stops anyway when more
  than :data:`MAX_SKIPPED_FRACTION` of an epoch's steps are skipped. Weights are checked to
  be finite before every checkpoint.
* A failed checkpoint write (disk full) stops the run with the message; the previous
  ``last.pt`` is untouched (atomic writes). After a crash, ``--resume`` removes leftover
  temporary files, drops ``metrics.jsonl`` lines of epochs after the checkpoint (they are
  redone) and continues bit-for-bit as an uninterrupted run would (same device and threads).

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=1"])
    >>> pretrain(cfg, "data/BreaKHis_v1", "runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mpcs.config import PRETRAIN_DEFAULTS, differences
from mpcs.data.breakhis import complete_samples, scan_breakhis
from mpcs.data.cache import (
    default_cache_dir,
    load_images_with_report,
    quiet_pil_warnings,
    with_skip_hint,
)
from mpcs.data.pairs import MAGNIFICATIONS, create_pair_sampler
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.checkpoint import load_checkpoint, save_checkpoint
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.runinfo import atomic_write_text, write_run_info
from mpcs.errors import CheckpointError, ConfigError, DataError, MpcsError
from mpcs.losses import NTXentLoss
from mpcs.models import MPCSModel, create_mpcs_model

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run-folder lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: With ``train.on_nonfinite=skip`` a run stops anyway once more than this fraction of an
#: epoch's steps had to be skipped.
MAX_SKIPPED_FRACTION = 0.1
#: Keys that may differ between a checkpoint's configuration and the resuming one: policies
#: for bad input, which do not change what a good step computes.
RESUME_MAY_DIFFER = ("data.on_bad_image", "train.on_nonfinite")
SKIPPED_IMAGES = "skipped_images.csv"
LOCK_FILE = ".lock"


class NonFiniteLossError(MpcsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutputError(MpcsError):
    """The run folder cannot be created or written (not a folder, read-only, disk full)."""


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


def pair_samples(data_dir: str | Path, patients: Sequence[str] | None = None,
                 on_bad_image: str = "error") -> pd.DataFrame:
    """Samples present at all four magnifications, restricted to ``patients`` if given.

    With ``on_bad_image="skip"`` unreadable images are left out (their samples become
    incomplete) and listed in ``samples.attrs["skipped"]`` as ``(path, reason)`` pairs.

    Raises :class:`DataError` when nothing is left to pre-train on, saying why.
    """
    try:
        with quiet_pil_warnings():
            manifest = scan_breakhis(data_dir, on_bad_image=on_bad_image)
    except DataError as err:
        raise with_skip_hint(err) from None
    skipped = list(manifest.attrs.get("skipped", []))
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
        left_out = f"; {len(skipped)} unusable images were skipped" if skipped else ""
        raise DataError(
            f"{data_dir}: no sample is present at all four magnifications, so MPCS has no pairs "
            f"to train on. A sample is (patient, sequence number) and needs one image at each "
            f"of 40X, 100X, 200X and 400X with the same sequence number; found "
            f"{len(manifest)} images of {manifest['patient_id'].nunique()} patients "
            f"({counts}) and 0 complete samples{left_out}.")
    dropped = manifest["sample_key"].nunique() - len(samples)
    if dropped:
        log.info("pairs: %d samples lack a magnification and are left out of pre-training",
                 dropped)
    samples.attrs["skipped"] = skipped
    return samples


class PairData:
    """Decoded pixels of all four magnifications of every sample: uint8 [S, 4, 3, H, W].

    With ``on_bad_image="skip"`` a sample with an image that fails to decode is dropped
    whole (``dropped``: ``(sample_key, path, reason)``); ``samples`` holds the kept ones.
    """

    def __init__(self, samples: pd.DataFrame, size: int, cache_dir: str | Path | None,
                 progress: bool = True, on_bad_image: str = "error"):
        paths = [p for _, row in samples.iterrows() for p in
                 (row[f"path_{m}"] for m in MAGNIFICATIONS)]
        try:
            pixels, bad = load_images_with_report(paths, size, cache_dir=cache_dir,
                                                  progress=progress, on_bad_image=on_bad_image)
        except DataError as err:
            raise with_skip_hint(err) from None
        self.pixels = np.asarray(pixels).reshape(len(samples), 4, 3, size, size)
        reasons = dict(bad)
        self.dropped: list[tuple[str, str, str]] = []
        keep = []
        for i, key in enumerate(samples["sample_key"]):
            failed = [p for p in paths[4 * i:4 * i + 4] if p in reasons]
            if failed:
                self.dropped += [(str(key), p, reasons[p]) for p in failed]
                log.warning("sample %s dropped from pairs: %s failed to decode (%s)",
                            key, failed[0], reasons[failed[0]])
            else:
                keep.append(i)
        self.rows = np.asarray(keep, dtype=np.int64)  # sample -> row of ``pixels``
        self.samples = samples.iloc[keep].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.samples)

    def views(self, index: np.ndarray, mag1: np.ndarray, mag2: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[index]
        return (torch.from_numpy(self.pixels[rows, mag1]),
                torch.from_numpy(self.pixels[rows, mag2]))


def _rng_state(np_rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": np_rng.bit_generator.state, "torch_aug": gen.get_state(),
            "torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def _restore_rng(state: Mapping[str, Any], np_rng: np.random.Generator,
                 gen: torch.Generator) -> None:
    np_rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch_aug"])
    torch.set_rng_state(state["torch"])
    if state.get("python"):
        random.setstate((3, tuple(int(x) for x in state["python"]), None))


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


# --------------------------------------------------------------------------- run folder


def _check_output_folder(run_dir: Path) -> None:
    """Refuse, before any work, an output path that cannot become a writable folder."""
    where = run_dir.absolute()
    existing = where
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "it is a file" if existing == where else f"{existing} is a file"
        raise OutputError(f"cannot use {run_dir} as the run folder: {what}, not a folder; "
                          f"choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the run folder {run_dir}: {existing} is not writable "
                          f"(permission denied or read-only); choose another --out")


def _open_run_folder(run_dir: Path) -> IO[str]:
    """Create ``RUN`` and ``RUN/checkpoints``, lock ``RUN`` for this process, remove
    temporary files left by a killed run; returns the open lock file (close to unlock)."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {run_dir}: "
                          f"{exc.strerror or exc}; choose another --out") from None
    if fcntl is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise OutputError(f"{run_dir} is in use by another mpcs process (it holds "
                              f"{run_dir / LOCK_FILE}); wait for it to end or choose another "
                              f"--out") from None
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            log.info("removed %s, a temporary file left by an interrupted run", tmp)
    return lock


def _write_skipped(run_dir: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "stage", "reason"])
    writer.writerows(rows)
    path = run_dir / SKIPPED_IMAGES
    atomic_write_text(path, buf.getvalue())
    return path


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Keep the ``metrics.jsonl`` lines of epochs up to the checkpoint's (a crash may have
    recorded an epoch whose checkpoint was never written; it is redone)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["epoch"]) <= last_epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the crash
    if len(kept) != len(lines):
        log.info("%s: dropped %d line(s) of epochs after the checkpoint (epoch %d); they are "
                 "redone", path, len(lines) - len(kept), last_epoch)
        atomic_write_text(path, "".join(f"{x}\n" for x in kept))


def _append_line(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- checkpoints


def _with_defaults(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with keys it lacks (added to mpcs after it was written) at their defaults."""
    out = dict(cfg)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = _with_defaults(out[key], value)
    return out


def _load(path: Path) -> dict[str, Any]:
    return load_checkpoint(path)


def _resume_state(run_dir: Path, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
        return None
    state = _load(last)
    old = _with_defaults(state.get("config", {}), PRETRAIN_DEFAULTS)
    diff = [x for x in differences(old, cfg) if x.split(":", 1)[0] not in RESUME_MAY_DIFFER]
    if diff:
        raise CheckpointError(f"{last} was written with a different configuration; refusing to "
                              "resume. Differing keys:\n  " + "\n  ".join(diff))
    return state


def _last_good(ckpt_dir: Path, saved_epoch: int) -> str:
    if saved_epoch:
        return f"The last good checkpoint is {ckpt_dir / 'last.pt'} (epoch {saved_epoch})."
    return "No checkpoint was written yet (this happened in the first epoch of the run)."


def _finite(tensors: Sequence[torch.Tensor]) -> bool:
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _save(state: dict[str, Any], path: Path, epoch: int, ckpt_dir: Path,
          saved_epoch: int) -> None:
    try:
        save_checkpoint(state, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write checkpoint {path} at the end of epoch {epoch}: "
            f"{exc.strerror or exc}; the run stopped. {_last_good(ckpt_dir, saved_epoch)} "
            f"Free space (or fix the folder), then continue with --resume.") from None


# --------------------------------------------------------------------------- training


def pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: str | Path,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pre-train MPCS as configured; returns a summary (epochs, steps, final loss, paths)."""
    run_dir = Path(run_dir)
    t, d = cfg["train"], cfg["data"]
    device = select_device(t["device"])
    _check_output_folder(run_dir)
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    samples = pair_samples(data_dir, d["patients"], on_bad_image=d["on_bad_image"])
    steps_per_epoch(len(samples), t["batch_size"], t["drop_last"])
    lock = _open_run_folder(run_dir)
    try:
        return _pretrain(cfg, data_dir, run_dir, samples, device, resume, progress)
    finally:
        lock.close()


def _pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: Path,
              samples: pd.DataFrame, device: torch.device, resume: bool,
              progress: bool) -> dict[str, Any]:
    t, d = cfg["train"], cfg["data"]
    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    state = _resume_state(run_dir, cfg) if resume else None

    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    np_rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    cache_dir = (d["cache_dir"] or default_cache_dir()) if d["use_cache"] else None
    data = PairData(samples, d["input_size"], cache_dir, progress=progress,
                    on_bad_image=d["on_bad_image"])
    skipped = [(p, "scan", r) for p, r in samples.attrs.get("skipped", [])]
    skipped += [(p, "decode", f"{r}; sample {key} dropped from pre-training pairs")
                for key, p, r in data.dropped]
    if d["on_bad_image"] == "skip":
        listing = _write_skipped(run_dir, skipped)
        if skipped:
            log.warning("skipped %d unusable image(s) (%d found by the scan, %d failed to "
                        "decode; %d sample(s) dropped from pairs by decode failures); listed "
                        "in %s", len(skipped), len(skipped) - len(data.dropped),
                        len(data.dropped), len({k for k, _, _ in data.dropped}), listing)
    if len(data) == 0:
        raise DataError(f"{data_dir}: every one of the {len(samples)} complete samples has an "
                        f"image that failed to decode; nothing is left to pre-train on (see "
                        f"{run_dir / SKIPPED_IMAGES})")
    steps = steps_per_epoch(len(data), t["batch_size"], t["drop_last"])
    if state is not None and state.get("steps_per_epoch", steps) != steps:
        raise CheckpointError(
            f"{ckpt_dir / 'last.pt'} was written with {state['steps_per_epoch']} steps per "
            f"epoch but the data now give {steps} ({len(data)} samples); the data set changed "
            f"since (images added, removed or skipped), so resuming would not continue the "
            f"same run. Start a new run in another folder.")
    if state is None and (ckpt_dir / "last.pt").exists():
        log.warning("%s already holds a run; starting over and replacing it (use --resume to "
                    "continue it instead)", run_dir)

    try:
        write_run_info(run_dir, cfg, {"data": str(data_dir), "device": str(device),
                                      "pair_samples": len(data), "steps_per_epoch": steps,
                                      "skipped_images": len(skipped)})
        atomic_write_text(run_dir / "pretrain_patients.txt",
                          "\n".join(sorted(data.samples["patient_id"].unique())) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {run_dir}: "
                          f"{exc.strerror or exc}") from None

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
    start_epoch, global_step, total_skipped = 0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], np_rng, gen)
        start_epoch, global_step = state["epoch"], state["global_step"]
        total_skipped = int(state.get("skipped_steps", 0))
        log.info("resuming %s at epoch %d (step %d)", run_dir, start_epoch + 1, global_step)
        try:
            _trim_metrics(metrics_path, start_epoch)
        except OSError as exc:
            raise OutputError(f"cannot rewrite {metrics_path}: {exc.strerror or exc}") from None
    saved_epoch = start_epoch
    params = [p for p in model.parameters() if p.requires_grad]

    last_loss = float("nan")
    for epoch in range(start_epoch, t["epochs"]):
        model.train()
        order = np_rng.permutation(len(data))
        t0, seen, loss_sum, skipped_steps = time.perf_counter(), 0, 0.0, 0
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
            optimizer.zero_grad(set_to_none=True)
            problem = None
            if not torch.isfinite(loss):
                problem = f"non-finite loss ({loss.item()})"
            else:
                loss.backward()
                if not _finite([p.grad for p in params]):
                    problem = f"non-finite gradients (loss {loss.item():.4g})"
            if problem is not None:
                where = (f"epoch {epoch + 1}/{t['epochs']}, step {i + 1}/{steps} "
                         f"(global step {global_step + 1})")
                if t["on_nonfinite"] == "stop":
                    raise NonFiniteLossError(
                        f"{problem} at {where}; stopped before the optimiser step, so no "
                        f"non-finite value reached the weights or a checkpoint. "
                        f"{_last_good(ckpt_dir, saved_epoch)} Lower optim.lr or raise "
                        f"loss.temperature (a new run), or skip such steps with --set "
                        f"train.on_nonfinite=skip (also with --resume).")
                skipped_steps += 1
                optimizer.zero_grad(set_to_none=True)
                log.warning("%s at %s: optimiser step skipped (%d skipped in this epoch)",
                            problem, where, skipped_steps)
                if skipped_steps > MAX_SKIPPED_FRACTION * steps:
                    raise NonFiniteLossError(
                        f"{skipped_steps} of the {steps} steps of epoch {epoch + 1} had a "
                        f"non-finite loss or gradient, more than "
                        f"{MAX_SKIPPED_FRACTION:.0%}, so the run stopped although "
                        f"train.on_nonfinite=skip; the last one was at {where}. "
                        f"{_last_good(ckpt_dir, saved_epoch)} Lower optim.lr or raise "
                        f"loss.temperature.")
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                global_step += 1
                continue
            optimizer.step()
            scheduler.step()
            global_step += 1
            seen += 2 * len(idx)
            loss_sum += loss.item()
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{rate:.0f}")
        seconds = time.perf_counter() - t0
        last_loss = loss_sum / (steps - skipped_steps)
        total_skipped += skipped_steps
        if not _finite(list(model.state_dict().values())):
            raise NonFiniteLossError(
                f"the weights became non-finite during epoch {epoch + 1} although every loss "
                f"and gradient was finite; they were not saved. "
                f"{_last_good(ckpt_dir, saved_epoch)} Lower optim.lr.")
        record = {"epoch": epoch + 1, "step": global_step, "loss": last_loss,
                  "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / seconds,
                  "seconds": seconds, "skipped_steps": skipped_steps}
        try:
            if epoch == 0:  # a new run: replaces the metrics of a run it starts over
                atomic_write_text(metrics_path, json.dumps(record) + "\n")
            else:
                _append_line(metrics_path, json.dumps(record))
        except OSError as exc:
            raise OutputError(f"cannot write {metrics_path} at the end of epoch {epoch + 1}: "
                              f"{exc.strerror or exc}; the run stopped. "
                              f"{_last_good(ckpt_dir, saved_epoch)} Free space (or fix the "
                              f"folder), then continue with --resume.") from None
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{t['epochs']}  loss {last_loss:.4f}  "
                       f"lr {record['lr']:.2e}  {record['images_per_s']:.0f} img/s"
                       + (f"  ({skipped_steps} steps skipped)" if skipped_steps else ""))
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                "global_step": global_step, "skipped_steps": total_skipped,
                "steps_per_epoch": steps, "pair_samples": len(data),
                "rng": _rng_state(np_rng, gen), "config": dict(cfg), "kind": "mpcs-pretrain",
                # The normalisation the encoder was trained with (ImageNet's, or [-1, 1] for
                # EfficientNet-Lite weights); a rebuilt encoder must use the same.
                "encoder_norm": {"mean": list(enc.mean), "std": list(enc.std)}}
        _save(ckpt, ckpt_dir / "last.pt", epoch + 1, ckpt_dir, saved_epoch)
        saved_epoch = epoch + 1
        if (epoch + 1) % t["checkpoint_every"] == 0 or epoch + 1 == t["epochs"]:
            _save(ckpt, ckpt_dir / f"epoch_{epoch + 1:04d}.pt", epoch + 1, ckpt_dir, saved_epoch)
    return {"run_dir": str(run_dir), "epochs": t["epochs"], "global_step": global_step,
            "skipped_steps": total_skipped, "final_loss": last_loss,
            "checkpoint": str(ckpt_dir / "last.pt"), "pair_samples": len(data),
            "skipped_images": len(skipped)}


def load_pretrained(checkpoint: str | Path) -> MPCSModel:
    """Rebuild the model of a pre-training checkpoint (config inside) with its weights."""
    state = _load(Path(checkpoint))
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{checkpoint}: not an mpcs pre-training checkpoint "
                              "(no config/model entries)")
    cfg = dict(state["config"])
    cfg["model"] = {**cfg["model"], "weights": "none"}
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    norm = state.get("encoder_norm")
    if norm:
        model.encoder.mean = tuple(float(v) for v in norm["mean"])
        model.encoder.std = tuple(float(v) for v in norm["std"])
    return model
