"""What ``--resume`` needs to continue a pre-training run exactly: the checkpoint and its
configuration, every random number generator's state, the fingerprint of the images, and
the ``metrics.jsonl`` lines of epochs that are redone.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpcs.config import PRETRAIN_DEFAULTS, resume_conflicts
from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import CheckpointError, DataError
from mpcs.core.io import atomic_write_text
from mpcs.data.cache import CACHE_VERSION, cache_key
from mpcs.data.pairs.breakhis import PATH_COLUMNS
from mpcs.data.splits import dataset_fingerprint
from mpcs.engine.runinfo import last_recorded

log = logging.getLogger(__name__)

#: Keys that may differ between a checkpoint's configuration and the resuming one: policies
#: for bad input, which do not change what a good step computes.
RESUME_MAY_DIFFER = ("data.on_bad_image", "train.on_nonfinite", "data.num_workers",
                     "data.prefetch", "data.pin_memory", "distributed.backend",
                     "train.checkpoint_every", "train.last_every", "pairs.log_scales",
                     "monitor.")  # a key ending in "." covers its whole section


# --------------------------------------------------------------------------- random numbers


def seeded_generators(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch's and Python's global generators; the run's numpy generator (order and
    pairs) and torch generator (augmentation parameters)."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def rng_state(np_rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    """Every generator's state, for a checkpoint."""
    return {"numpy": np_rng.bit_generator.state, "torch_aug": gen.get_state(),
            "torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def restore_rng(state: Mapping[str, Any], np_rng: np.random.Generator,
                gen: torch.Generator) -> None:
    """Put every generator back into the state :func:`rng_state` recorded."""
    np_rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch_aug"])
    torch.set_rng_state(state["torch"])
    if state.get("python"):
        random.setstate((3, tuple(int(x) for x in state["python"]), None))


# --------------------------------------------------------------------------- checkpoint


def resume_state(run_dir: Path, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state in ``RUN/checkpoints/last.pt`` (None without one: a fresh start), refused
    when it was written with a configuration that trains differently."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
        return None
    state = load_checkpoint(last)
    diff = resume_conflicts(state.get("config", {}), cfg, PRETRAIN_DEFAULTS, RESUME_MAY_DIFFER)
    if diff:
        raise CheckpointError(f"{last} was written with a different configuration; refusing to "
                              "resume. Differing keys:\n  " + "\n  ".join(diff))
    return state


def check_steps(state: Mapping[str, Any] | None, steps: int, samples: int, world_size: int,
                ckpt_dir: Path) -> None:
    """Refuse to resume a run whose epochs had another number of steps."""
    if state is None or state.get("steps_per_epoch", steps) == steps:
        return
    raise CheckpointError(
        f"{ckpt_dir / 'last.pt'} was written with {state['steps_per_epoch']} steps per "
        f"epoch but the data now give {steps} ({samples} samples, world size "
        f"{world_size}); the data set changed since (images added, removed or "
        f"skipped), or train.drop_last=false cuts the last batch differently for this "
        f"number of processes, so resuming would not continue the same run. Start a new "
        f"run in another folder.")


def trim_metrics(path: Path, last_epoch: int) -> None:
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


# --------------------------------------------------------------------------- data fingerprint


def data_fingerprint(sources: Sequence[tuple[str, Any]]) -> dict[str, Any] | None:
    """What ``--resume`` checks the images against (recorded in ``run.json``).

    For the image-folder sources (``breakhis``): the images' common folder (``root``), their
    number, :func:`mpcs.data.splits.dataset_fingerprint` of their names relative to it,
    patients and labels (``names``), and per patient the :func:`mpcs.data.cache.cache_key`
    of its files: paths, sizes, modification times (``patients``). None without such a
    source (zoom and wsi sources are not fingerprinted).
    """
    frames = [source for _, source in sources if isinstance(source, pd.DataFrame)]
    if not frames:
        return None
    images = pd.concat([f.melt(id_vars=["patient_id", "label"], value_vars=PATH_COLUMNS,
                               value_name="path") for f in frames]).dropna(subset=["path"])
    paths = [os.path.abspath(p) for p in images["path"]]
    manifest = pd.DataFrame({"path": paths, "patient_id": images["patient_id"].astype(str),
                             "label": images["label"].astype(str)})
    manifest.attrs["root"] = os.path.commonpath([os.path.dirname(p) for p in paths])
    patients = {str(pid): cache_key(sorted(group), 0, missing_ok=True)
                for pid, group in manifest.groupby("patient_id")["path"]}
    return {"root": manifest.attrs["root"], "images": len(manifest),
            "names": dataset_fingerprint(manifest), "key_version": CACHE_VERSION,
            "patients": patients}


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def data_change(saved: Mapping[str, Any], now: Mapping[str, Any] | None) -> str | None:
    """What changed between two :func:`data_fingerprint` records, in words; None if
    nothing did (or there is nothing to compare)."""
    if now is None:
        return None
    before, after = dict(saved.get("patients") or {}), dict(now["patients"])
    in_place = saved.get("root") == now["root"] and saved.get("key_version") == now[
        "key_version"]
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    if saved.get("names") != now["names"]:
        what = [f"images were added, removed, renamed or relabelled ({saved.get('images')} "
                f"then, {now['images']} now)"]
        added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after)
        what += [f"new patients: {_few(added)}"] if added else []
        what += [f"patients gone: {_few(removed)}"] if removed else []
        what += [f"patients with changed files: {_few(changed)}"] if changed and in_place else []
        return "; ".join(what)
    if saved.get("root") != now["root"]:
        return (f"the images moved from {saved.get('root')} to {now['root']} (same names; their "
                f"sizes and modification times were recorded at the old place, so other pixels "
                f"cannot be ruled out: put the data back there, or link it there)")
    if changed and in_place:
        return (f"the images of patient(s) {_few(changed)} have the same names but other sizes "
                f"or modification times (other pixels)")
    return None


def checked_fingerprint(run_dir: Path, sources: Sequence[tuple[str, Any]],
                        resuming: bool) -> dict[str, Any] | None:
    """This start's :func:`data_fingerprint`; when ``resuming`` a checkpoint, refuse data
    other than that recorded in ``run.json`` (a run started by an older mpcs has none: a
    logged note, and it resumes unchecked)."""
    now = data_fingerprint(sources)
    if not resuming:
        return now
    run_json = run_dir / "run.json"
    saved = last_recorded(run_json, "data_fingerprint")
    if not isinstance(saved, Mapping):
        log.info("%s records no fingerprint of the data (a run started by an older mpcs); "
                 "resuming without checking that the images are unchanged", run_json)
        return now
    change = data_change(saved, now)
    if change:
        raise DataError(f"{run_json}: refusing to resume on other data: {change}, since the run "
                        f"started; its checkpoint was trained on the images as they were. "
                        f"Restore them, or start a new run (--overwrite, or another --out)")
    return now
