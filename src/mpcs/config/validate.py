"""Checking configurations: types against the defaults, choices, ranges, and the settings
that only make sense together. Every check raises :class:`~mpcs.core.errors.ConfigError`
before any work starts."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mpcs.config.defaults import (
    EXPERIMENT_DEFAULTS,
    FINETUNE_DEFAULTS,
    KEEP_CHECKPOINTS,
    PRETRAIN_DEFAULTS,
)
from mpcs.core.errors import ConfigError
from mpcs.core.vocab import ALL, CONTINUOUS, MAGNIFICATIONS
from mpcs.data.datasets import DATASETS, patch_datasets
from mpcs.data.pairs.samplers import SAMPLERS
from mpcs.data.pairs.sources import SOURCE_NAMES
from mpcs.data.stain import STAIN_METHODS
from mpcs.data.transforms import TTA_KINDS, AugmentConfig
from mpcs.methods import list_methods

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
    "pairs.strategy": tuple(SAMPLERS),
    "method": tuple(list_methods()),
    "data.source": SOURCE_NAMES,
    "data.zoom_magnification": (ALL, "lowest", *MAGNIFICATIONS),
    "monitor.knn_magnification": (ALL, *MAGNIFICATIONS),
    "optim.name": ("adam", "adamw", "sgd", "lars"),
    "schedule.name": ("cosine", "constant"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "data.on_bad_image": ("error", "skip"),
    "train.on_nonfinite": ("stop", "skip"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    # fine-tuning keys (paths that do not exist in a pre-training configuration)
    "kind": ("finetune", "experiment"),
    "train.select_by": ("val_ila", "val_loss"),
    "dataset": tuple(DATASETS),
    "transfer.stain_norm": STAIN_METHODS,
    "transfer.tta": TTA_KINDS,
}

#: ``train.device``: auto (CUDA when available, else CPU), cpu, cuda, cuda:N (GPU N) or mps.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]+)?")

#: Keys that also take a list of their choices (several pair sources in one run).
_LISTS_OF_CHOICES = ("data.source",)


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
             f"schedule.warmup_epochs must be in [0, train.epochs={t['epochs']}], got "
             f"{s['warmup_epochs']}; e.g. --set schedule.warmup_epochs="
             f"{max(0, min(int(s['warmup_epochs']), int(t['epochs']) // 2))}")
    _require(0 <= s["final_lr_fraction"] <= 1,
             f"schedule.final_lr_fraction must be in [0, 1], got {s['final_lr_fraction']}")
    _require(cfg["data"]["input_size"] >= 16,
             f"data.input_size must be >= 16, got {cfg['data']['input_size']}")
    _require(t["threads"] >= 0,
             f"train.threads must be >= 0 (0 = torch's default), got {t['threads']}")
    _require(_DEVICE.fullmatch(t["device"]) is not None,
             f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t['device']!r}")


def check_pretrain(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of a resolved pre-training configuration."""
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


def check_finetune(cfg: Mapping[str, Any]) -> None:
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
    AugmentConfig(**{k: v for k, v in a.items() if k not in ("crop_scale", "crop_ratio")}
                  ).validate()


def check_experiment(cfg: Mapping[str, Any]) -> None:
    """Types and values of an experiment grid (the presets it names are resolved by
    :func:`mpcs.config.validate_experiment`)."""
    _check_types(cfg, EXPERIMENT_DEFAULTS)
    _require(cfg["folds"] >= 2, f"folds must be >= 2, got {cfg['folds']}")
    # continuous scales need a zoom or wsi source, not the BreakHis folders of a grid
    strategies = tuple(s for s in _CHOICES["pairs.strategy"] if s != CONTINUOUS)
    bad = [m for m in cfg["methods"] if m not in strategies]
    _require(not bad, f"methods must be pair strategies ({', '.join(strategies)}), got {bad}")
    _require(cfg["baseline"] in ("imagenet", "none"),
             f"baseline must be imagenet or none, got {cfg['baseline']!r}")
    transfer = cfg["dataset"] != "breakhis"
    _require(cfg["mode"] in ("finetune", "linear") or (transfer and cfg["mode"] == "both"),
             f"mode must be finetune or linear{' or both' if transfer else ''}, got "
             f"{cfg['mode']!r}")
    mags = (*MAGNIFICATIONS, ALL)
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
    if transfer:
        check_transfer(cfg)



def check_transfer(cfg: Mapping[str, Any]) -> None:
    """Value checks of an experiment's ``transfer`` settings (types are checked already)."""
    t = cfg["transfer"]

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    require(cfg["dataset"] in patch_datasets(), f"dataset must be one of "
            f"{', '.join(DATASETS)}, got {cfg['dataset']!r}")
    require(t["patch_size"] >= 8, f"transfer.patch_size must be >= 8, got {t['patch_size']}")
    require(t["patch_stride"] >= 0,
            f"transfer.patch_stride must be >= 0 (0 = patch size), got {t['patch_stride']}")
    require(t["stain_norm"] == "none" or bool(t["stain_reference"]),
            f"transfer.stain_norm={t['stain_norm']} needs transfer.stain_reference (the path "
            "of a reference image)")
    require(0 <= t["stain_min_tissue"] < 1,
            f"transfer.stain_min_tissue must be in [0, 1), got {t['stain_min_tissue']}")
    require(0 < t["val_fraction"] < 1,
            f"transfer.val_fraction must be in (0, 1), got {t['val_fraction']}")
    require(0 <= t["pretrain_fold"], f"transfer.pretrain_fold must be >= 0, got "
            f"{t['pretrain_fold']}")
    require(all(isinstance(p, str) and p for p in t["pretrained"]),
            f"transfer.pretrained must be a list of paths, got {t['pretrained']!r}")


