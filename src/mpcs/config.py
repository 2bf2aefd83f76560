"""Configuration: defaults, YAML presets shipped in the package, command-line overrides.

A configuration is a nested dict. :func:`resolve` starts from :data:`PRETRAIN_DEFAULTS`,
merges a preset (``--preset NAME``, a YAML file in ``mpcs/presets``) or a user file
(``--config FILE.yaml``), then ``--set key.sub=value`` overrides (values parsed as YAML, so
``--set train.epochs=5`` gives an int and ``--set model.head_hidden=[256]`` a list). Unknown
keys, wrong types and impossible values raise :class:`~mpcs.errors.ConfigError` before any
work starts.

Two kinds of configuration exist: pre-training (:data:`PRETRAIN_DEFAULTS`, the default) and
fine-tuning / linear evaluation (:data:`FINETUNE_DEFAULTS`). A preset or file that holds
``kind: finetune`` is a fine-tuning configuration; ``resolve(..., kind="finetune")`` asks for
one and refuses a pre-training preset (and vice versa).

Example:
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=2"])
    >>> cfg["train"]["epochs"]
    2
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mpcs.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` as a string; accept it as the float every user means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$
                  |^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$
                  |^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$
                  |^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


PRETRAIN_DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "description": "",
    "seed": 0,
    # Self-supervised objective (mpcs.methods): mpcs | simclr | byol | simsiam | barlow_twins
    # | vicreg; options of the non-MPCS methods in "ssl".
    "method": "mpcs",
    "data": {
        "input_size": 224,
        "patients": None,        # restrict pre-training to these patient ids (fold training part)
        # Where pairs come from: breakhis (the four magnifications of a BreakHis-layout
        # folder) | zoom (any folder of single-scale images, synthetic magnification by
        # nested crops) | wsi (whole-slide images, read at any scale; section "wsi").
        # A list (e.g. [breakhis, zoom]) trains on several sources of the folder in one run,
        # each taking source_weights' share of an epoch (null: in proportion to its samples).
        "source": "breakhis",
        "source_weights": None,
        "zoom_base_size": 0,     # zoom: side of the decoded base image; 0 = input_size x max scale
        # zoom on a BreakHis tree: all | lowest (each patient's lowest magnification) | 40X..400X
        "zoom_magnification": "lowest",
        "cache_dir": None,       # None: $MPCS_CACHE or ~/.cache/mpcs
        "use_cache": True,
        "on_bad_image": "error",  # error | skip (skipped files: RUN/skipped_images.csv)
        # Batch loading from the decoded-image cache (mpcs.data.loader): background threads
        # (None = auto: 1; 0 = in the training loop), batches prepared ahead, page-locked
        # memory for host-to-GPU copies (None = auto: on with CUDA).
        "num_workers": None,
        "prefetch": 2,
        "pin_memory": None,
    },
    "model": {
        "encoder": "resnet50_dilated",
        "weights": "imagenet",   # imagenet | none | path to a state dict
        "head_hidden": [1024],
        "head_out": 128,
        "channels_last": True,
        # leading encoder stages (timm's coarse groups: 1 = the stem, then block groups)
        # kept as initialised: no gradient, normalisation statistics frozen
        "frozen_stages": 0,
        # every encoder BatchNorm layer in eval mode while training (the initialisation's
        # running statistics, never updated; affine weights still train)
        "frozen_norm": False,
    },
    # strategy continuous: relative magnifications log-uniform in scale_range whose ratio is
    # at least min_ratio (sources zoom and wsi); log_scales writes RUN/pair_scales.csv.
    # complete_only: pair only samples at all four magnifications (the paper); false: every
    # sample with the magnifications its strategy needs (fixed: 200X+400X; ordered: one with
    # its successor; random: any two), pairs drawn among the ones it has.
    "pairs": {"strategy": "ordered", "scale_range": [1.0, 10.0], "min_ratio": 1.25,
              "log_scales": False, "complete_only": True},
    "ssl": {
        "predictor_hidden": 512,      # byol/simsiam: hidden size of the predictor MLP
        "momentum": 0.99,             # byol: target EMA momentum at step 0 (cosine to 1)
        "barlow_lambda": 0.005,       # barlow_twins: off-diagonal weight
        "vicreg_weights": [25.0, 25.0, 1.0],  # vicreg: invariance, variance, covariance
        "simclr_crop_scale": [0.35, 1.0],     # simclr: random resized crop area fraction
    },
    "wsi": {
        "mpp_at_1x": 2.0,             # µm per view pixel at relative magnification 1
        "locations_per_slide": 64,    # tissue locations sampled per slide (the "samples")
        "min_tissue": 0.5,            # tissue fraction of the widest field at a location
        "assume_mpp": None,           # level-0 µm/pixel for slides without metadata
        "mask_max_side": 1024,        # thumbnail side for the tissue mask
    },
    # Online kNN accuracy on held-out patients every knn_every epochs (0 = off); labels are
    # used only by the monitor. val_patients: the query patients (e.g. a fold's val part);
    # the training patients' images are the labelled reference bank.
    "monitor": {"knn_every": 0, "knn_k": 20, "knn_temperature": 0.07, "val_patients": None,
                "knn_magnification": "all"},
    # The uniform transformation T_U (mpcs.data.transforms). hed: H&E stain jitter strength
    # (0 = off); per_view_colour: colour and stain jitter drawn per view, geometry per pair.
    "augment": {
        "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
        "hflip": 0.5, "vflip": 0.5, "rot90": True, "rotation_degrees": 15.0, "translate": 0.05,
        "hed": 0.0, "per_view_colour": False,
    },
    "loss": {"temperature": 0.01},
    "optim": {
        "name": "adam",
        "lr": 1.0e-5,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "lars_eta": 0.001,
        "lr_biases": None,
        "scale_lr_with_batch": False,  # lr * batch_size / 256 (LARS convention)
    },
    "schedule": {"name": "cosine", "warmup_epochs": 0, "final_lr_fraction": 0.0},
    "train": {
        "epochs": 1000,
        "batch_size": 128,       # GLOBAL batch (pairs per step over all torchrun processes)
        "drop_last": True,
        "checkpoint_every": 50,  # epoch_XXXX.pt every k epochs (and at the last epoch)
        "last_every": 1,         # last.pt (what --resume reads) every k epochs and at the end
        "device": "auto",        # auto | cpu | cuda | cuda:N | mps
        "amp": "auto",           # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
        "threads": 0,            # torch CPU threads; 0 = torch's default
        "on_nonfinite": "stop",  # stop | skip (skip the step; stop anyway past 10% of an epoch)
    },
    # Multi-process runs (torchrun; mpcs.engine.distributed). Ignored by a single process.
    "distributed": {
        "sync_bn": False,        # SyncBatchNorm: BatchNorm statistics over the global batch (CUDA)
        "backend": "auto",       # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    },
}

# Keys whose default is None accept these types.
_NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "data.patients": (list,),
    "data.source_weights": (list,),
    "data.cache_dir": (str,),
    "optim.lr_biases": (float, int),
    "wsi.assume_mpp": (float, int),
    "monitor.val_patients": (list,),
    "data.num_workers": (int,),
    "data.pin_memory": (bool,),
    "transfer.pretrain_data": (str,),
    "transfer.stain_reference": (str,),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "pairs.strategy": ("fixed", "ordered", "random", "fp", "op", "rp", "continuous"),
    "method": ("mpcs", "simclr", "byol", "simsiam", "barlow_twins", "vicreg"),
    "data.source": ("breakhis", "zoom", "wsi"),
    "data.zoom_magnification": ("all", "lowest", "40X", "100X", "200X", "400X"),
    "monitor.knn_magnification": ("all", "40X", "100X", "200X", "400X"),
    "optim.name": ("adam", "adamw", "sgd", "lars"),
    "schedule.name": ("cosine", "constant"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "data.on_bad_image": ("error", "skip"),
    "train.on_nonfinite": ("stop", "skip"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    # fine-tuning keys (paths that do not exist in a pre-training configuration)
    "kind": ("finetune", "experiment"),
    "train.select_by": ("val_ila", "val_loss"),
    "dataset": ("breakhis", "bach", "bcc"),
    "transfer.stain_norm": ("none", "reinhard", "macenko"),
    "transfer.tta": ("none", "flips", "dihedral"),
}

#: A preset name (a file name in mpcs/presets without .yaml): no folders, no "..".
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: ``train.device``: auto (CUDA when available, else CPU), cpu, cuda, cuda:N (GPU N) or mps.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]+)?")

#: Keys that also take a list of their choices (several pair sources in one run).
_LISTS_OF_CHOICES = ("data.source",)

KINDS: tuple[str, ...] = ("pretrain", "finetune", "experiment")

#: Fine-tuning and linear evaluation (``mpcs.engine.finetune``). The values are the paper's
#: fine-tuning settings (sec. 4.3.2: Adam, lr 2e-5, batch 32, input 224, random crop, flip,
#: affine, rotation, colour jitter, dropout 0.3); epochs, early stopping and the augmentation
#: strengths are not in the paper and are our choices.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "kind": "finetune",
    "name": "custom",
    "description": "",
    "seed": 0,
    "data": {
        "input_size": 224,
        "cache_dir": None,       # None: $MPCS_CACHE or ~/.cache/mpcs
        "use_cache": True,
    },
    "model": {
        "encoder": "resnet50_dilated",  # used for init imagenet|none|plain state dict; an mpcs
                                        # pre-training checkpoint brings its own encoder
        "dropout": 0.3,
        "channels_last": True,
    },
    "augment": {
        "crop_scale": [0.8, 1.0],       # random resized crop: area fraction range
        "crop_ratio": [0.75, 1.3333333333333333],  # and aspect ratio range
        "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05,
        "hflip": 0.5, "vflip": 0.5, "rot90": True, "rotation_degrees": 15.0, "translate": 0.05,
    },
    "optim": {"name": "adam", "lr": 2.0e-5, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {"name": "constant", "warmup_epochs": 0, "final_lr_fraction": 0.0},
    "train": {
        "epochs": 50,
        "batch_size": 32,
        "patience": 10,          # early stopping: epochs without a better val score; 0 = off
        # at least this many optimiser steps: the epoch budget grows to reach them and early
        # stopping waits for them (small training sets have few steps per epoch)
        "min_steps": 0,
        "select_by": "val_ila",  # val_ila (val loss breaks ties) | val_loss (val ILA breaks ties)
        "eval_batch_size": 64,
        "device": "auto",
        "amp": "auto",
        "threads": 0,
    },
    "linear": {                  # linear evaluation: dropout + linear head on frozen features
        "epochs": 100,
        "batch_size": 256,
        "lr": 1.0e-3,
        "weight_decay": 0.0,
        "patience": 20,
    },
}


KEEP_CHECKPOINTS = ("all", "fold0")

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "kind": "experiment",
    "name": "custom",
    "description": "",
    "dataset": "breakhis",
    "seed": 0,
    "folds": 5,
    "methods": ["fixed", "ordered", "random"],   # MPCS pair strategies pre-trained per fold
    "baseline": "imagenet",                      # init of the baseline: imagenet | none
    "pretrain_preset": "mpcs-op-resnet50",       # its pairs.strategy is set per method
    "pretrain_overrides": [],
    "finetune_preset": "finetune-paper",
    "finetune_overrides": [],
    "mode": "finetune",                          # finetune | linear
    "magnifications": ["40X", "100X", "200X", "400X"],
    "label_fractions": [0.2],
    "cross_magnification": False,                # test each model at all four magnifications
    # Model checkpoints kept once a fold's cells are finished: all | fold0 (the report's
    # pictures read fold 0; later folds keep their metrics and predictions, and drop
    # best.pt and pre-training checkpoints: the demo 0.6 GB instead of 2.5)
    "keep_checkpoints": "all",
    # dataset bach | bcc: patch-based transfer (mpcs.evaluation.transfer); mode may be "both"
    "transfer": {
        "pretrained": [],         # MPCS checkpoints, pre-training runs or BreakHis experiments
        "pretrain_fold": 0,       # fold whose pre-training runs an experiment folder gives
        "pretrain_data": None,    # BreakHis folder: pre-train methods lacking a checkpoint
        "patch_size": 224,
        "patch_stride": 0,        # 0: patch_size (no overlap)
        "stain_norm": "none",     # none | reinhard | macenko
        "stain_reference": None,  # reference image (needed by reinhard / macenko)
        "stain_min_tissue": 0.05,  # macenko: less tissue -> raw patch kept (counted)
        "tta": "none",            # test-time augmentation: none | flips | dihedral
        "val_fraction": 0.25,     # validation images: this fraction of the non-test images
    },
}


def preset_names(kind: str | None = None) -> list[str]:
    """Names of the presets shipped in ``mpcs/presets`` (only those of ``kind`` if given)."""
    folder = resources.files("mpcs") / "presets"
    names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if kind is None:
        return names
    _check_kind(kind)
    return [n for n in names if config_kind(load_preset(n)) == kind]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown configuration kind {kind!r}; use one of {', '.join(KINDS)}")


def config_kind(data: Mapping[str, Any]) -> str:
    """The kind of a preset or config mapping: its ``kind`` key, else ``pretrain``."""
    kind = data.get("kind", "pretrain")
    if kind not in KINDS:
        raise ConfigError(f"config key 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a shipped preset. ``name`` is a plain name as ``mpcs presets`` lists it;
    a path (folders, ``..``, ``.yaml``) is refused: files of settings go through ``--config``."""
    if not _PRESET_NAME.fullmatch(name) or name.lower().endswith((".yaml", ".yml")):
        raise ConfigError(f"preset {name!r} is not a preset name: a preset is a name that "
                          f"`mpcs presets` lists (no folder, no .yaml); give a YAML file of "
                          f"settings with --config FILE.yaml")
    path = resources.files("mpcs") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return yaml_load(path.read_text()) or {}


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping of keys, got {type(data)}")
    return data


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; keys not in ``base`` are errors."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {path!r}{_suggest(key, out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            out[key] = merge(out[key], value, prefix=f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def _check_types(cfg: dict[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> None:
    for key, default in defaults.items():
        path = f"{prefix}{key}"
        value = cfg[key]
        if value is False and "off" in _CHOICES.get(path, ()):
            value = cfg[key] = "off"  # YAML 1.1 reads a bare `off` as false
        if isinstance(default, dict):
            _check_types(value, default, f"{path}.")
            continue
        if value is None:
            if default is None:
                continue
            raise ConfigError(f"config key {path!r} must not be empty")
        if path in _LISTS_OF_CHOICES and isinstance(value, list):
            _check_choice_list(path, value)
            continue
        if default is None:
            allowed = _NULLABLE_TYPES.get(path, (object,))
        elif isinstance(default, bool):
            allowed = (bool,)
        elif isinstance(default, float):
            allowed = (float, int)
        else:
            allowed = (type(default),)
        if isinstance(value, bool) and bool not in allowed:
            allowed_ok = False
        else:
            allowed_ok = isinstance(value, allowed)
        if not allowed_ok:
            names = " or ".join(t.__name__ for t in allowed)
            raise ConfigError(f"config key {path!r} must be {names}, got {value!r}")
        if not _all_finite(value):
            raise ConfigError(f"config key {path!r} must be a finite number (not inf or nan), "
                              f"got {value!r}")
        if path in _CHOICES and value not in _CHOICES[path]:
            raise ConfigError(f"config key {path!r} must be one of {', '.join(_CHOICES[path])}, "
                              f"got {value!r}")


def _all_finite(value: Any) -> bool:
    """False when ``value`` is, or a list in it holds, an infinite or NaN float (YAML reads
    ``.inf`` and ``.nan`` as floats)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True


def _check_choice_list(path: str, value: list[Any]) -> None:
    choices = _CHOICES[path]
    bad = [v for v in value if v not in choices]
    if not value or bad or len(set(value)) != len(value):
        raise ConfigError(f"config key {path!r} must be one of {', '.join(choices)} or a list "
                          f"of distinct ones, got {value!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_optim_schedule_input(cfg: Mapping[str, Any]) -> None:
    """Checks shared by pre-training and fine-tuning configurations."""
    t, o, s = cfg["train"], cfg["optim"], cfg["schedule"]
    _require(o["lr"] > 0, f"optim.lr must be > 0, got {o['lr']}")
    _require(o["weight_decay"] >= 0, f"optim.weight_decay must be >= 0, got {o['weight_decay']}")
    _require(0 <= s["warmup_epochs"] <= t["epochs"],
             f"schedule.warmup_epochs must be in [0, train.epochs], got {s['warmup_epochs']}")
    _require(0 <= s["final_lr_fraction"] <= 1,
             f"schedule.final_lr_fraction must be in [0, 1], got {s['final_lr_fraction']}")
    _require(cfg["data"]["input_size"] >= 16,
             f"data.input_size must be >= 16, got {cfg['data']['input_size']}")
    _require(t["threads"] >= 0,
             f"train.threads must be >= 0 (0 = torch's default), got {t['threads']}")
    _require(_DEVICE.fullmatch(t["device"]) is not None,
             f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t['device']!r}")


def validate_pretrain(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of a resolved pre-training configuration.

    A fine-tuning or experiment configuration (``kind: finetune|experiment``) is handed to
    :func:`validate_finetune` or :func:`validate_experiment`.
    """
    if cfg.get("kind") == "finetune":
        validate_finetune(cfg)
        return
    if cfg.get("kind") == "experiment":
        validate_experiment(cfg)
        return
    _check_types(cfg, PRETRAIN_DEFAULTS)
    t = cfg["train"]
    _require(cfg["loss"]["temperature"] > 0,
             f"loss.temperature must be > 0, got {cfg['loss']['temperature']}")
    _require(t["epochs"] >= 1, f"train.epochs must be >= 1, got {t['epochs']}")
    _require(t["batch_size"] >= 2,
             f"train.batch_size must be >= 2 (NT-Xent needs negatives), got {t['batch_size']}")
    _require(t["checkpoint_every"] >= 1,
             f"train.checkpoint_every must be >= 1, got {t['checkpoint_every']}")
    _require(t["last_every"] >= 1, f"train.last_every must be >= 1, got {t['last_every']}")
    workers = cfg["data"]["num_workers"]
    _require(workers is None or workers >= 0,
             f"data.num_workers must be >= 0 (or null for auto), got {workers}")
    _require(cfg["data"]["prefetch"] >= 1,
             f"data.prefetch must be >= 1, got {cfg['data']['prefetch']}")
    _check_optim_schedule_input(cfg)
    _require(cfg["model"]["head_out"] >= 1, "model.head_out must be >= 1")
    _require(cfg["model"]["frozen_stages"] >= 0, "model.frozen_stages must be >= 0")
    _require(all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                 for d in cfg["model"]["head_hidden"]),
             f"model.head_hidden must be a list of positive ints, got "
             f"{cfg['model']['head_hidden']}")
    from mpcs.data.transforms import AugmentConfig

    AugmentConfig(**cfg["augment"]).validate()
    _check_ssl_sources(cfg)


def _check_ssl_sources(cfg: Mapping[str, Any]) -> None:
    """Checks of the method options, the pair sources and the kNN monitor (issue 8)."""
    ssl, p, w, mon, d = cfg["ssl"], cfg["pairs"], cfg["wsi"], cfg["monitor"], cfg["data"]
    _require(0 <= ssl["momentum"] <= 1, f"ssl.momentum must be in [0, 1], got {ssl['momentum']}")
    _require(ssl["predictor_hidden"] >= 1, "ssl.predictor_hidden must be >= 1")
    _require(ssl["barlow_lambda"] >= 0, "ssl.barlow_lambda must be >= 0")
    vw = ssl["vicreg_weights"]
    _require(isinstance(vw, list) and len(vw) == 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in vw),
        f"ssl.vicreg_weights must be a list of three numbers >= 0, got {vw!r}")
    _range_pair(ssl["simclr_crop_scale"], "ssl.simclr_crop_scale", 0.0, 1.0)
    lo, hi = _range_pair(p["scale_range"], "pairs.scale_range", 0.0, float("inf"))
    _require(p["min_ratio"] >= 1, f"pairs.min_ratio must be >= 1, got {p['min_ratio']}")
    sources = d["source"] if isinstance(d["source"], list) else [d["source"]]
    weights = d["source_weights"]
    if weights is not None:
        _require(len(sources) > 1 and len(weights) == len(sources) and all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
            and w > 0 for w in weights),
            f"data.source_weights must be one number > 0 per source of a list data.source "
            f"(got {weights!r} for data.source={d['source']!r})")
    if p["strategy"] == "continuous":
        _require(sources != ["breakhis"],
                 "pairs.strategy=continuous needs data.source=zoom or wsi (a BreakHis folder "
                 "has only the four magnifications 40X..400X)")
        _require(hi / lo > p["min_ratio"],
                 f"pairs.scale_range {p['scale_range']} must span a ratio above "
                 f"pairs.min_ratio={p['min_ratio']}")
    if "zoom" in sources:
        _require(lo >= 1, f"data.source=zoom needs pairs.scale_range >= 1 (1 = the whole "
                 f"image), got {p['scale_range']}")
    _require(d["zoom_base_size"] >= 0, "data.zoom_base_size must be >= 0 (0 = automatic)")
    _require(w["mpp_at_1x"] > 0, f"wsi.mpp_at_1x must be > 0, got {w['mpp_at_1x']}")
    _require(w["locations_per_slide"] >= 1, "wsi.locations_per_slide must be >= 1")
    _require(0 <= w["min_tissue"] <= 1, f"wsi.min_tissue must be in [0, 1], got "
             f"{w['min_tissue']}")
    _require(w["assume_mpp"] is None or w["assume_mpp"] > 0, "wsi.assume_mpp must be > 0")
    _require(w["mask_max_side"] >= 16, "wsi.mask_max_side must be >= 16")
    _require(mon["knn_every"] >= 0, f"monitor.knn_every must be >= 0 (0 = off), got "
             f"{mon['knn_every']}")
    _require(mon["knn_k"] >= 1, f"monitor.knn_k must be >= 1, got {mon['knn_k']}")
    _require(mon["knn_temperature"] > 0, "monitor.knn_temperature must be > 0")


def _range_pair(value: Any, path: str, low: float, high: float) -> tuple[float, float]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    _require(ok, f"config key {path!r} must be a list [min, max] of two numbers, got {value!r}")
    a, b = float(value[0]), float(value[1])
    _require(low < a <= b <= high,
             f"config key {path!r} must satisfy {low} < min <= max <= {high}, got {value!r}")
    return a, b


def validate_finetune(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of a resolved fine-tuning / linear evaluation configuration."""
    _check_types(cfg, FINETUNE_DEFAULTS)
    t, o, lin, a = cfg["train"], cfg["optim"], cfg["linear"], cfg["augment"]
    _require(o["name"] in ("adam", "adamw", "sgd"),
             f"config key 'optim.name' must be one of adam, adamw, sgd for fine-tuning, "
             f"got {o['name']!r}")
    _require(t["epochs"] >= 1, f"train.epochs must be >= 1, got {t['epochs']}")
    _require(t["batch_size"] >= 2, f"train.batch_size must be >= 2, got {t['batch_size']}")
    _require(t["eval_batch_size"] >= 1,
             f"train.eval_batch_size must be >= 1, got {t['eval_batch_size']}")
    _require(t["patience"] >= 0, f"train.patience must be >= 0 (0 = off), got {t['patience']}")
    _require(t["min_steps"] >= 0, f"train.min_steps must be >= 0, got {t['min_steps']}")
    _require(0 <= o["momentum"] < 1, f"optim.momentum must be in [0, 1), got {o['momentum']}")
    _check_optim_schedule_input(cfg)
    _require(0 <= cfg["model"]["dropout"] < 1,
             f"model.dropout must be in [0, 1), got {cfg['model']['dropout']}")
    _require(lin["epochs"] >= 1, f"linear.epochs must be >= 1, got {lin['epochs']}")
    _require(lin["batch_size"] >= 1, f"linear.batch_size must be >= 1, got {lin['batch_size']}")
    _require(lin["lr"] > 0, f"linear.lr must be > 0, got {lin['lr']}")
    _require(lin["weight_decay"] >= 0,
             f"linear.weight_decay must be >= 0, got {lin['weight_decay']}")
    _require(lin["patience"] >= 0, f"linear.patience must be >= 0 (0 = off), got "
             f"{lin['patience']}")
    _range_pair(a["crop_scale"], "augment.crop_scale", 0.0, 1.0)
    _range_pair(a["crop_ratio"], "augment.crop_ratio", 0.0, float("inf"))
    from mpcs.data.transforms import AugmentConfig

    AugmentConfig(**{k: v for k, v in a.items() if k not in ("crop_scale", "crop_ratio")}
                  ).validate()


def resolve(preset: str | None = None, config_file: str | Path | None = None,
            overrides: Iterable[str] = (), kind: str | None = None) -> dict[str, Any]:
    """Defaults <- preset or file <- ``key=value`` overrides; validated.

    ``kind`` (``"pretrain"`` or ``"finetune"``) picks the defaults; ``None`` takes the kind
    the preset or file declares (its ``kind`` key; none means pre-training). A preset or file
    that declares another kind than the one asked for is a :class:`ConfigError` (a user file
    without a ``kind`` key takes the kind asked for).
    """
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    if kind is not None:
        _check_kind(kind)
    data: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
    elif config_file:
        data = load_yaml(config_file)
    # A shipped preset without a kind key is a pre-training one; a user's file without one
    # takes the kind asked for.
    declared = config_kind(data) if ("kind" in data or preset) else (kind or "pretrain")
    if kind is not None and (preset or config_file) and declared != kind:
        source = f"preset {preset!r}" if preset else f"config file {config_file}"
        others = ", ".join(preset_names(kind))
        raise ConfigError(f"{source} is a {declared} configuration, not a {kind} one"
                          + (f"; {kind} presets: {others}" if others else ""))
    kind = kind or declared
    if kind == "pretrain":
        data = {k: v for k, v in data.items() if k != "kind"}
    defaults = {"pretrain": PRETRAIN_DEFAULTS, "finetune": FINETUNE_DEFAULTS,
                "experiment": EXPERIMENT_DEFAULTS}[kind]
    cfg = copy.deepcopy(defaults)
    if preset:
        cfg = merge(cfg, data)
        cfg["name"] = cfg.get("name") if cfg.get("name") != "custom" else preset
    elif config_file:
        cfg = merge(cfg, data)
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    if kind == "pretrain":
        validate_pretrain(cfg)
    elif kind == "finetune":
        validate_finetune(cfg)
    else:
        validate_experiment(cfg)
    return cfg


def validate_experiment(cfg: Mapping[str, Any]) -> None:
    """Types and values of an experiment grid; the presets it names must exist."""
    _check_types(cfg, EXPERIMENT_DEFAULTS)
    _require(cfg["folds"] >= 2, f"folds must be >= 2, got {cfg['folds']}")
    # continuous scales need a zoom or wsi source, not the BreakHis folders of a grid
    strategies = tuple(s for s in _CHOICES["pairs.strategy"] if s != "continuous")
    bad = [m for m in cfg["methods"] if m not in strategies]
    _require(not bad, f"methods must be pair strategies ({', '.join(strategies)}), got {bad}")
    _require(cfg["baseline"] in ("imagenet", "none"),
             f"baseline must be imagenet or none, got {cfg['baseline']!r}")
    transfer = cfg["dataset"] != "breakhis"
    _require(cfg["mode"] in ("finetune", "linear") or (transfer and cfg["mode"] == "both"),
             f"mode must be finetune or linear{' or both' if transfer else ''}, got "
             f"{cfg['mode']!r}")
    mags = ("40X", "100X", "200X", "400X", "all")
    bad = [m for m in cfg["magnifications"] if m not in mags]
    _require(not bad and cfg["magnifications"],
             f"magnifications must be a non-empty list of {', '.join(mags)}, got "
             f"{cfg['magnifications']}")
    _require(cfg["keep_checkpoints"] in KEEP_CHECKPOINTS,
             f"keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got "
             f"{cfg['keep_checkpoints']!r}")
    bad = [f for f in cfg["label_fractions"]
           if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1]
    _require(not bad and cfg["label_fractions"],
             f"label_fractions must be numbers in (0, 1], got {cfg['label_fractions']}")
    _check_grid_presets(cfg)
    if transfer:
        from mpcs.evaluation.transfer import validate_transfer

        validate_transfer(cfg)


def _check_grid_presets(cfg: Mapping[str, Any]) -> None:
    """The grid's presets with its overrides, as its runs resolve them (one pre-training
    configuration per pair strategy): a bad override stops the grid before any work."""
    for key in ("pretrain_overrides", "finetune_overrides"):
        _require(all(isinstance(o, str) for o in cfg[key]),
                 f"{key} must be a list of key=value texts, got {cfg[key]!r}")
    try:
        for strategy in cfg["methods"] or [None]:
            pairs = [f"pairs.strategy={strategy}"] if strategy else []
            resolve(preset=cfg["pretrain_preset"], kind="pretrain",
                    overrides=[*cfg["pretrain_overrides"], *pairs])
    except ConfigError as e:
        raise ConfigError(f"pretrain_preset/pretrain_overrides: {e}") from None
    try:
        resolve(preset=cfg["finetune_preset"], kind="finetune",
                overrides=cfg["finetune_overrides"])
    except ConfigError as e:
        raise ConfigError(f"finetune_preset/finetune_overrides: {e}") from None


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += differences(va, vb, f"{path}.")
        elif va != vb:
            out.append(f"{path}: {va!r} != {vb!r}")
    return out


def with_defaults(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with the keys it lacks (added to mpcs after it was written) at their defaults."""
    out = dict(cfg)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = with_defaults(out[key], value)
    return out


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any],
                     defaults: Mapping[str, Any], may_differ: Iterable[str]) -> list[str]:
    """Differences (``"key: old != new"``) that forbid continuing a run saved with ``saved``.

    ``saved`` is completed with ``defaults`` first, so that keys added to mpcs since do not
    count; keys that mpcs no longer has (in neither ``current`` nor ``defaults``) do not
    count either. A key in ``may_differ`` is allowed to change; one ending in ``"."`` covers its
    whole section.

    >>> resume_conflicts({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0},
    ...                  {"d": 0}, ["b."])
    []
    >>> resume_conflicts({"a": 1, "gone": 5}, {"a": 2}, {"a": 0}, [])
    ['a: 1 != 2']
    """
    allowed = tuple(may_differ)

    def free(key: str) -> bool:
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in allowed):
            return True
        # a setting mpcs no longer has (saved, absent now and from the defaults)
        return not _has_key(current, key) and not _has_key(defaults, key)

    return [x for x in differences(with_defaults(saved, defaults), current)
            if not free(x.split(":", 1)[0])]


def _has_key(cfg: Mapping[str, Any], dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def dump(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)
