"""Frozen-probe comparison of encoders on real images with repeated patient-grouped folds.

The question a user of MPCS asks first: on MY images, does pre-training help over the
ImageNet encoder it starts from? :func:`run_real_probe` answers it on any BreakHis-layout
tree at one magnification:

1. the images at ``magnification`` (default 100X) are the labelled evaluation set;
2. ``repeats`` x ``folds`` patient-grouped, label-stratified splits
   (:class:`sklearn.model_selection.StratifiedGroupKFold`, a new shuffle per repeat): no
   patient is ever on both sides;
3. per variant an encoder: random init, ImageNet, or MPCS pre-trained FOR EACH FOLD on the
   images of every patient outside that fold's test part (all magnifications, no labels),
   so no test patient's pixels reach pre-training;
4. per fold a frozen linear probe (:func:`mpcs.evaluation.linear_probe.fit_fixed_probe`:
   standardised L2 logistic regression with C = 1, no selection), scored on the test
   patients: image-level (ILA) and patient-level (PLA) accuracy;
5. mean±std over all folds and a paired comparison of each variant with the ImageNet one:
   the mean difference, the plain paired t-test and the Nadeau-Bengio corrected one (folds
   of repeated cross-validation share training patients, so the plain test is optimistic).

``OUT/results.csv`` gets one row per (repeat, fold, variant) as it is finished; a second call
with the same settings skips finished cells (``OUT/settings.json`` refuses other settings).
MPCS runs live in ``OUT/runs/r<R>f<K>/<variant>`` (their checkpoints are deleted once the
fold's features are saved in ``OUT/features``, unless ``keep_checkpoints``).

Example:
    >>> settings = ProbeSettings(folds=5, repeats=3, input_size=160)
    >>> table = run_real_probe("../shared/data/breakhis-dev", "probe-out", settings,
    ...                        default_variants())                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from mpcs.config import config_kind, load_preset, resolve
from mpcs.core.errors import ConfigError, DataError
from mpcs.core.io import atomic_write_text
from mpcs.core.runtime import default_cache_dir
from mpcs.core.tables import csv_text, read_csv
from mpcs.data.cache import load_images
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.engine.finetune import finetune
from mpcs.engine.pretrain import load_pretrained, pretrain
from mpcs.engine.runinfo import write_run_info
from mpcs.evaluation.html import escape_markdown
from mpcs.evaluation.linear_probe import fit_fixed_probe
from mpcs.evaluation.stats import corrected_paired_test, format_mean_std, paired_test
from mpcs.metrics import image_level_accuracy, patient_level_accuracy
from mpcs.models import create_encoder
from mpcs.models.features import extract_features

log = logging.getLogger(__name__)

INITS = ("none", "imagenet", "mpcs", "finetune")
RESULTS = "results.csv"
SETTINGS = "settings.json"
REFERENCE = "imagenet"


@dataclass(frozen=True)
class Variant:
    """One encoder of the comparison.

    Attributes:
        name: its label in the tables (unique).
        init: ``none`` (random init), ``imagenet``, ``mpcs`` (pre-trained per fold), or
            ``finetune`` (not a frozen probe: the ImageNet encoder fine-tuned with the labels
            of the fold's training patients, selected on a part of them, see
            :func:`finetune_cell`).
        preset: the pre-training preset of an ``mpcs`` variant, the fine-tuning preset of a
            ``finetune`` one.
        overrides: ``key=value`` overrides of that preset.
    """

    name: str
    init: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"variant {self.name!r}: init must be one of {', '.join(INITS)}, "
                              f"got {self.init!r}")
        if (self.init in ("mpcs", "finetune")) != (self.preset is not None):
            raise ConfigError(f"variant {self.name!r}: a preset is needed for init=mpcs or "
                              f"finetune and only for them")

    @property
    def kind(self) -> str:
        """The configuration kind of the variant's preset."""
        return "finetune" if self.init == "finetune" else "pretrain"


@dataclass(frozen=True)
class ProbeSettings:
    """What every variant shares: evaluation images, folds, encoder and input size."""

    magnification: str = "100X"
    folds: int = 5
    repeats: int = 3
    encoder: str = "tf_efficientnet_lite0"
    input_size: int = 160
    seed: int = 0

    def validate(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.input_size < 16:
            raise ConfigError(f"input size must be >= 16, got {self.input_size}")


def parse_variant(text: str) -> Variant:
    """``NAME=none``, ``NAME=imagenet`` or ``NAME=PRESET[,key=value,...]``: an MPCS
    pre-training preset (pre-trained per fold, then probed) or a fine-tuning preset (the
    ImageNet encoder fine-tuned per fold), with overrides.

    Example:
        >>> parse_variant("op=real-zoom-lite0,train.epochs=5")
        Variant(name='op', init='mpcs', preset='real-zoom-lite0', overrides=('train.epochs=5',))
        >>> parse_variant("ft=finetune-paper").init
        'finetune'
    """
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ConfigError(f"--variant expects NAME=none, NAME=imagenet or "
                          f"NAME=PRESET[,key=value,...], got {text!r}")
    head, *overrides = _split_top_level(spec)
    if head in ("none", "imagenet"):
        if overrides:
            raise ConfigError(f"--variant {text!r}: {head} takes no overrides")
        return Variant(name, head)
    init = "finetune" if config_kind(load_preset(head)) == "finetune" else "mpcs"
    return Variant(name, init, head, tuple(overrides))


def _split_top_level(spec: str) -> list[str]:
    """Split at commas outside brackets: ``a,b=[1, 2]`` -> ``["a", "b=[1, 2]"]``."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(spec):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    return [*parts, spec[start:]]


def default_variants() -> list[Variant]:
    """Random init, ImageNet, and MPCS with the shipped real-data preset."""
    return [Variant("random init", "none"), Variant(REFERENCE, "imagenet"),
            Variant("mpcs real-zoom", "mpcs", "real-zoom-lite0")]


def probe_folds(labels: Sequence, patients: Sequence, folds: int, repeats: int, seed: int
                ) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(repeat, fold, train_index, test_index)`` (image rows) of ``repeats`` splits of the
    PATIENTS into ``folds`` parts stratified by the patients' class; repeat ``r`` shuffles
    with ``seed + r``.

    Patients are split, not images: sklearn's ``StratifiedGroupKFold`` balances image counts
    and, with one class per patient, makes nearly the same folds for every shuffle (measured
    on breakhis-dev: three "repeats" gave identical folds), so repeats would add nothing.

    Raises:
        DataError: a patient with two labels, a class with fewer patients than folds.
    """
    y, groups = np.asarray(labels), np.asarray(patients)
    table = pd.DataFrame({"patient": groups, "label": y}).drop_duplicates()
    mixed = table[table["patient"].duplicated(keep=False)]["patient"].unique()
    if len(mixed):
        raise DataError(f"patients with images of two classes: {', '.join(map(str, mixed[:5]))}")
    per_class = table["label"].value_counts()
    if len(per_class) < 2:
        raise DataError(f"the evaluation images hold a single class ({y[0]}); a probe needs two")
    if per_class.min() < folds:
        raise DataError(f"class {per_class.idxmin()!r} has {per_class.min()} patients, too few "
                        f"for {folds} patient-level folds stratified by class; lower --folds")
    out = []
    pats, plab = table["patient"].to_numpy(), table["label"].to_numpy()
    for r in range(repeats):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + r)
        for k, (_, test_pat) in enumerate(splitter.split(pats, plab)):
            test = np.isin(groups, pats[test_pat])
            out.append((r, k, np.flatnonzero(~test), np.flatnonzero(test)))
    return out


def score_probe(features: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Fit a probe on ``train`` rows, score ``test`` rows: ``ila``, ``pla`` (fractions)."""
    probe = fit_fixed_probe(features[train], labels[train])
    pred = probe.predict(features[test])
    return {"ila": image_level_accuracy(labels[test], pred),
            "pla": patient_level_accuracy(labels[test], pred, patients[test])}


def _check_settings(out: Path, settings: ProbeSettings, data_dir: Path,
                    variants: Sequence[Variant]) -> None:
    """Refuse to mix results of other settings, or of another variant under the same name;
    new variants may join."""
    record = json.loads(json.dumps({**asdict(settings), "data": str(Path(data_dir).resolve()),
                                    "variants": {v.name: asdict(v) for v in variants}}))
    path = out / SETTINGS
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(record)
                      if k != "variants" and old.get(k) != record.get(k))
        diff += [f"variant {n!r}" for n, spec in record["variants"].items()
                 if old.get("variants", {}).get(n, spec) != spec]
        if diff:
            raise ConfigError(f"{out} holds results made with other settings ({', '.join(diff)}"
                              f"); choose another --out or another variant name")
        record["variants"] = {**old.get("variants", {}), **record["variants"]}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def _read_results(out: Path) -> list[dict[str, Any]]:
    path = out / RESULTS
    return read_csv(path).to_dict("records") if path.exists() else []


class _Encoders:
    """Features of each variant: fold-independent ones (random init, ImageNet) once."""

    def __init__(self, data_dir: Path, out: Path, settings: ProbeSettings, pixels: np.ndarray,
                 patients_all: Sequence[str], keep_checkpoints: bool) -> None:
        self.data_dir, self.out, self.s, self.pixels = data_dir, out, settings, pixels
        self.patients_all = sorted(set(patients_all))
        self.keep = keep_checkpoints
        self.fixed: dict[str, np.ndarray] = {}

    def features(self, v: Variant, repeat: int, fold: int, test_patients: set[str]
                 ) -> np.ndarray:
        if v.init != "mpcs":
            if v.name not in self.fixed:
                torch.manual_seed(self.s.seed)
                enc = create_encoder(self.s.encoder, weights=v.init, channels_last=True)
                self.fixed[v.name] = extract_features(enc, self.pixels, self.s.input_size)
            return self.fixed[v.name]
        path = self.out / "features" / f"r{repeat}f{fold}-{_slug(v.name)}.npy"
        if path.exists():
            return np.load(path)
        run_dir = self.out / "runs" / f"r{repeat}f{fold}" / _slug(v.name)
        cfg = self.pretrain_config(v, repeat, fold, test_patients)
        pretrain(cfg, self.data_dir, run_dir, resume=(run_dir / "checkpoints" / "last.pt")
                 .exists(), progress=False)
        enc = load_pretrained(run_dir / "checkpoints" / "last.pt").encoder
        feats = extract_features(enc, self.pixels, self.s.input_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
        if not self.keep:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return feats

    def pretrain_config(self, v: Variant, repeat: int, fold: int, test_patients: set[str]
                        ) -> dict[str, Any]:
        overrides = [*v.overrides, f"model.encoder={self.s.encoder}",
                     f"data.input_size={self.s.input_size}",
                     f"seed={self.s.seed + 1000 * repeat + fold}"]
        cfg = resolve(preset=v.preset, overrides=overrides, kind="pretrain")
        cfg["data"]["patients"] = [p for p in self.patients_all if p not in test_patients]
        return cfg


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_real_probe(data_dir: str | Path, out: str | Path, settings: ProbeSettings,
                   variants: Sequence[Variant], keep_checkpoints: bool = False,
                   progress: bool = True,
                   on_row: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Run (or continue) the comparison; returns ``results.csv`` as a table (one row per
    repeat x fold x variant). See the module docstring."""
    settings.validate()
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names must be unique, got {names}")
    for v in variants:  # refuse a bad preset or override before any work
        if v.preset is not None:
            resolve(preset=v.preset, overrides=v.overrides, kind=v.kind)
    data_dir, out = Path(data_dir), Path(out)
    manifest = scan_breakhis(data_dir)
    rows = manifest[manifest["magnification"] == settings.magnification].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{data_dir}: no image at {settings.magnification}")
    labels = rows["label"].to_numpy()
    patients = rows["patient_id"].astype(str).to_numpy()
    splits = probe_folds(labels, patients, settings.folds, settings.repeats, settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings, data_dir, variants)
    write_run_info(out, {"settings": asdict(settings), "variants": [asdict(v) for v in variants]},
                   {"data": str(data_dir), "images": len(rows),
                    "patients": int(len(set(patients)))})
    pixels = load_images(list(rows["path"].astype(str)), settings.input_size,
                         cache_dir=default_cache_dir(), progress=progress)
    encoders = _Encoders(data_dir, out, settings, pixels, manifest["patient_id"].astype(str),
                         keep_checkpoints)
    records = _read_results(out)
    done = {(r["repeat"], r["fold"], r["variant"]) for r in records}
    todo = [(r, k, tr, te, v) for r, k, tr, te in splits for v in variants
            if (r, k, v.name) not in done]
    bar = tqdm(todo, desc="probe cells", unit="cell", disable=not progress)
    for r, k, tr, te, v in bar:
        bar.set_postfix_str(f"r{r} f{k} {v.name}")
        t0 = time.perf_counter()
        if v.init == "finetune":
            scores = finetune_cell(v, rows, tr, te, out / "runs" / f"r{r}f{k}" / _slug(v.name),
                                   settings, settings.seed + 1000 * r + k, keep_checkpoints)
        else:
            feats = encoders.features(v, r, k, set(patients[te]))
            scores = score_probe(feats, labels, patients, tr, te)
        row = {"repeat": r, "fold": k, "variant": v.name, **scores,
               "seconds": round(time.perf_counter() - t0, 1)}
        records.append(row)
        atomic_write_text(out / RESULTS, csv_text(pd.DataFrame(records)))
        if on_row is not None:
            on_row(row)
    results = pd.DataFrame(records)
    results = results[results["variant"].isin(names)].reset_index(drop=True)
    atomic_write_text(out / "summary.md", summary_markdown(results, variants, settings,
                                                          len(rows), len(set(patients))))
    return results


def finetune_cell(v: Variant, rows: pd.DataFrame, train: np.ndarray, test: np.ndarray,
                  run_dir: Path, settings: ProbeSettings, seed: int, keep_checkpoints: bool
                  ) -> dict[str, float]:
    """Fine-tune the ImageNet encoder on the fold's training patients, of which about a
    fifth (at least one per class) is held out for model selection; test once."""
    cfg = resolve(preset=v.preset, kind="finetune",
                  overrides=[*v.overrides, f"model.encoder={settings.encoder}",
                             f"data.input_size={settings.input_size}", f"seed={seed}"])
    fit, val = _carve_validation(rows.iloc[train], seed)
    summary = finetune(cfg, fit, val, rows.iloc[test], run_dir, init="imagenet",
                       progress=False, overwrite=True)  # a cell without a result is redone
    if not keep_checkpoints:
        (run_dir / "best.pt").unlink(missing_ok=True)
    return {"ila": summary["test_ila"], "pla": summary["test_pla"]}


def _carve_validation(train: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """About 20 % of the patients of each class (at least one) as the validation part."""
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for _, group in train.groupby("label"):
        patients = sorted(group["patient_id"].astype(str).unique())
        if len(patients) < 2:
            raise DataError(f"class {group['label'].iloc[0]!r} has {len(patients)} training "
                            f"patient(s): too few to hold one out for fine-tuning's selection")
        take = max(1, round(0.2 * len(patients)))
        val += list(rng.choice(patients, size=take, replace=False))
    held = train["patient_id"].astype(str).isin(val)
    return train[~held].reset_index(drop=True), train[held].reset_index(drop=True)


def compare(results: pd.DataFrame, variant: str, reference: str, metric: str,
            test_fraction: float) -> dict[str, Any]:
    """Paired comparison of ``variant`` with ``reference`` over matching (repeat, fold)."""
    a = results[results["variant"] == variant].set_index(["repeat", "fold"])[metric]
    b = results[results["variant"] == reference].set_index(["repeat", "fold"])[metric]
    a, b = a.align(b, join="inner")
    plain = paired_test(a.to_numpy(), b.to_numpy())
    corrected = corrected_paired_test(a.to_numpy(), b.to_numpy(), test_fraction)
    return {"n": plain["n"], "mean_diff": plain["mean_diff"], "t_pvalue": plain["t_pvalue"],
            "corrected_pvalue": corrected["pvalue"], "wins": int((a > b).sum()),
            "losses": int((a < b).sum())}


def summary_markdown(results: pd.DataFrame, variants: Sequence[Variant],
                     settings: ProbeSettings, images: int, patients: int) -> str:
    """The table of mean±std ILA/PLA per variant and the differences to ImageNet; the last
    line is the PLA difference of the best MPCS variant with its paired p-value."""
    test_fraction = 1.0 / settings.folds
    lines = [f"Frozen linear probe, {settings.magnification}, {images} images of {patients} "
             f"patients, {settings.repeats} x {settings.folds} patient-grouped folds, "
             f"{settings.encoder} at {settings.input_size} px. Mean±std over folds, %; "
             f"Δ = variant − {_reference(variants)} (paired over folds; p: t-test, p_NB: "
             f"Nadeau-Bengio corrected; W/L: folds better/worse).", "",
             "| variant | ILA | PLA | Δ ILA | Δ PLA | p (PLA) | p_NB (PLA) | W/L (PLA) |",
             "|---|---|---|---|---|---|---|---|"]
    ref = _reference(variants)
    has_ref = ref in set(results["variant"])
    for v in variants:
        name = v.name
        g = results[results["variant"] == name]
        if g.empty:
            continue
        cells = [format_mean_std(g["ila"].mean(), g["ila"].std(ddof=1)),
                 format_mean_std(g["pla"].mean(), g["pla"].std(ddof=1))]
        if has_ref and name != ref and len(g) >= 2:
            ci = compare(results, name, ref, "ila", test_fraction)
            cp = compare(results, name, ref, "pla", test_fraction)
            cells += [f"{100 * ci['mean_diff']:+.2f}", f"{100 * cp['mean_diff']:+.2f}",
                      f"{cp['t_pvalue']:.3f}", f"{cp['corrected_pvalue']:.3f}",
                      f"{cp['wins']}/{cp['losses']}"]
        else:
            cells += ["-"] * 5
        lines.append(f"| {escape_markdown(name)} | " + " | ".join(cells) + " |")
    lines += ["", escape_markdown(best_line(results, variants, settings))]
    return "\n".join(lines) + "\n"


def _reference(variants: Sequence[Variant]) -> str:
    """The variant the others are compared with: the first ImageNet one."""
    return next((v.name for v in variants if v.init == "imagenet"), REFERENCE)


def best_line(results: pd.DataFrame, variants: Sequence[Variant], settings: ProbeSettings
              ) -> str:
    """``PLA difference (best MPCS variant X − imagenet): +d points ... p = ...``."""
    ref = _reference(variants)
    candidates = [v.name for v in variants if v.init == "mpcs"
                  and (results["variant"] == v.name).sum() >= 2]
    if not (results["variant"] == ref).any() or not candidates:
        return "PLA difference: needs an ImageNet variant and an MPCS variant with results"
    means = {n: results.loc[results["variant"] == n, "pla"].mean() for n in candidates}
    best = max(candidates, key=lambda n: means[n])
    c = compare(results, best, ref, "pla", 1.0 / settings.folds)
    return (f"PLA difference (best MPCS variant {best} − {ref}): "
            f"{100 * c['mean_diff']:+.2f} points over {c['n']} folds, paired t-test "
            f"p = {c['t_pvalue']:.3f} (Nadeau-Bengio corrected p = {c['corrected_pvalue']:.3f})")
