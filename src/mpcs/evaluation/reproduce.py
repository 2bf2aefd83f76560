"""``mpcs reproduce``: the paper's Tables 5-9 from nothing, in one resumable command.

A reproduction folder ``OUT`` holds one stage per group of experiments:

* ``breakhis-resnet50``, ``breakhis-effnetb2`` (Tables 5 and 6): the BreakHis grid of
  ``mpcs experiment`` with the paper preset ``breakhis-full-<encoder>`` (per fold MPCS-FP/
  OP/RP pre-trained on the fold's training patients, every one and the ImageNet baseline
  fine-tuned per magnification) and the label fractions of the chosen tables (0.3333: Table
  5's 20 % of all images; 1.0: Table 6). One grid serves both tables, so the 15 pre-trainings
  of an encoder are done once;
* ``pretrain-breakhis`` (Tables 7-9): MPCS-FP/OP/RP ResNet-50 pre-trained on all of BreakHis
  (``mpcs-op-resnet50`` with each pair strategy), the encoders of the transfer experiments;
* ``bach`` (Tables 7 and 8) and ``bcc`` (Table 9): the transfer grids (presets
  ``bach-resnet50``, ``bcc-resnet50``) initialised from ``pretrain-breakhis``.

Before anything runs, the data are installed or found verified under ``DATA``
(:mod:`mpcs.data.download`) and the GPU time is estimated from the rates measured in
``bench/README.md``. Every stage resumes: a second call skips finished pre-trainings and
cells (the experiment runner's ``--resume``) and a verified data set. At the end
:mod:`mpcs.evaluation.reproduce_report` writes ``OUT/report.md`` and
``OUT/reproduction.csv``: our numbers beside the paper's for every cell.

``--scale cpu-tiny`` runs the same chain with :class:`TinySettings` (ResNet-10-T at 32 px
from random init, two folds, a few epochs, linear evaluation on BreakHis) on synthetic
stand-ins packed as the official archives (:mod:`mpcs.data.synth_archive`), or on the
official data with ``source="official"``. Its numbers show that the chain runs; they are
not a reproduction.

Example:
    >>> report = run_reproduce("repro", tables=(5, 6), scale="paper")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpcs import __version__
from mpcs.config import resolve
from mpcs.core.errors import ConfigError
from mpcs.core.io import atomic_write_text, check_output_folder
from mpcs.core.vocab import MAGNIFICATIONS, STRATEGIES
from mpcs.data.datasets import DOWNLOADS
from mpcs.data.download.fetch import DEFAULT_FETCH, FetchSettings
from mpcs.data.download.prepare import DataOptions, prepare_data
from mpcs.data.synth.archive import SynthSizes
from mpcs.engine.pretrain import pretrain
from mpcs.engine.runinfo import lock_folder
from mpcs.evaluation.cells import check_finished_pretraining
from mpcs.evaluation.experiment import run_experiment
from mpcs.evaluation.report import write_report
from mpcs.evaluation.reproduce_report import StageInfo, write_reproduction_report

__all__ = ["SCALES", "SOURCES", "TABLES", "TINY", "Stage", "TinySettings", "estimate_gpu_hours",
           "format_estimate", "parse_tables", "plan_stages", "run_reproduce"]

log = logging.getLogger(__name__)

Say = Callable[[str], None]

TABLES: tuple[int, ...] = (5, 6, 7, 8, 9)
SCALES: tuple[str, ...] = ("paper", "cpu-tiny")
SOURCES: tuple[str, ...] = ("official", "synthetic")
#: BreakHis label fractions of Table 5 (20 % of all images: a third of the training part,
#: the validation part being held out) and Table 6 (all training labels).
TABLE_FRACTIONS = {5: 0.3333, 6: 1.0}
BACH_FRACTIONS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
STATE = "reproduce.json"

#: Images/s (views) of the engine's pre-training step on one H100 80GB, bf16 (bench/README.md,
#: "GPU results", 2026-11-26). EfficientNet-b2 at 341 px was not measured: it is taken at
#: the dilated ResNet-50's rate and the estimate says so.
H100_VIEWS_PER_S = {"resnet50_dilated": 1523.0, "resnet50": 3364.0}
#: A validation pass costs about a third of a training step per image (forward only).
EVAL_COST = 1 / 3


@dataclass(frozen=True)
class TinySettings:
    """What ``--scale cpu-tiny`` changes: data sizes (synthetic source), folds, strategies,
    magnifications, epochs, input size, patch size, BACH label fractions."""

    sizes: SynthSizes = SynthSizes(breakhis_patients=12, breakhis_samples=3,
                                   breakhis_image=(64, 42), bach_per_class=6,
                                   bach_image=(96, 96), bcc_per_class=6, bcc_image=(96, 96))
    folds: int = 2
    methods: tuple[str, ...] = STRATEGIES
    magnifications: tuple[str, ...] = MAGNIFICATIONS
    pretrain_epochs: int = 3
    pretrain_batch: int = 8
    finetune_epochs: int = 2
    linear_epochs: int = 30
    input_size: int = 32
    patch_size: int = 48
    bach_fractions: tuple[float, ...] = (0.5, 1.0)


#: The settings of ``--scale cpu-tiny`` (read when a reproduction starts).
TINY = TinySettings()


@dataclass(frozen=True)
class Stage:
    """One stage of a reproduction: ``kind`` is ``experiment`` or ``pretrain``; ``preset``
    and ``overrides`` its configuration; ``dataset`` the data it reads; ``slot`` the paper
    encoder its numbers stand beside (``resnet50_dilated`` or ``efficientnet_b2``)."""

    key: str
    kind: str
    tables: tuple[int, ...]
    dataset: str
    preset: str
    overrides: tuple[str, ...] = ()
    slot: str = "resnet50_dilated"
    methods: tuple[str, ...] = STRATEGIES


def parse_tables(text: str) -> tuple[int, ...]:
    """``"5,6,9"`` -> ``(5, 6, 9)``; :class:`ConfigError` for anything but 5-9.

    Example:
        >>> parse_tables("9, 5")
        (5, 9)
    """
    try:
        tables = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        raise ConfigError(f"--tables takes numbers from 5 to 9 separated by commas, got "
                          f"{text!r}") from None
    if not tables or not tables <= set(TABLES):
        raise ConfigError(f"--tables takes numbers from 5 to 9 separated by commas, got "
                          f"{text!r}")
    return tuple(sorted(tables))


# --------------------------------------------------------------------------- plan


def _listed(values: Sequence[Any]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _tiny_breakhis(tiny: TinySettings) -> list[str]:
    return [f"folds={tiny.folds}", f"methods={_listed(tiny.methods)}",
            f"magnifications={_listed(tiny.magnifications)}",
            f"pretrain_overrides=[train.epochs={tiny.pretrain_epochs},"
            f"train.batch_size={tiny.pretrain_batch},data.input_size={tiny.input_size}]",
            f"finetune_overrides=[linear.epochs={tiny.linear_epochs},"
            f"data.input_size={tiny.input_size}]"]


def _tiny_transfer(tiny: TinySettings) -> list[str]:
    return [f"folds={tiny.folds}", f"methods={_listed(tiny.methods)}",
            "pretrain_preset=demo-pretrain", "finetune_preset=demo-linear",
            f"finetune_overrides=[train.epochs={tiny.finetune_epochs},"
            f"linear.epochs={tiny.linear_epochs},data.input_size={tiny.input_size}]",
            f"transfer.patch_size={tiny.patch_size}", "transfer.patch_stride=0"]


#: Disk use at every scale: model files of folds 1-4 are dropped once a fold is finished
#: (metrics and predictions stay; the report's pictures read fold 0), and at paper scale a
#: 1000-epoch pre-training keeps an epoch file every 250 epochs instead of every 50 (each
#: ResNet-50 file with its LARS state is about 0.3 GB). Neither changes a result.
KEEP = "keep_checkpoints=fold0"
PAPER_CHECKPOINTS = "train.checkpoint_every=250"


def _pretrained(out: Path, methods: Sequence[str]) -> str:
    runs = [str((out / "pretrain-breakhis" / m).absolute()) for m in methods]
    return f"transfer.pretrained={json.dumps(runs)}"  # quoted: any path parses


def plan_stages(tables: Sequence[int], scale: str, out: str | Path,
                tiny: TinySettings | None = None) -> list[Stage]:
    """The stages the chosen tables need, in the order they run (``tiny``: :data:`TINY`).

    Example:
        >>> [s.key for s in plan_stages((5, 9), "paper", "repro")]
        ['breakhis-resnet50', 'breakhis-effnetb2', 'pretrain-breakhis', 'bcc']
    """
    out, tables = Path(out), tuple(sorted(set(tables)))
    tiny = tiny if tiny is not None else TINY
    paper = scale == "paper"
    methods = STRATEGIES if paper else tiny.methods
    stages: list[Stage] = []
    fractions = [TABLE_FRACTIONS[t] for t in (5, 6) if t in tables]
    if fractions:
        slots = (("resnet50", "resnet50_dilated"), ("effnetb2", "efficientnet_b2"))
        for name, slot in slots if paper else slots[:1]:
            overrides = [f"label_fractions={_listed(fractions)}", KEEP]
            overrides += ([f"pretrain_overrides=[{PAPER_CHECKPOINTS}]"] if paper
                          else _tiny_breakhis(tiny))
            stages.append(Stage(f"breakhis-{name}", "experiment",
                                tuple(t for t in tables if t in (5, 6)), "breakhis",
                                f"breakhis-full-{name}" if paper else "demo", tuple(overrides),
                                slot, methods))
    transfer = tuple(t for t in tables if t >= 7)
    if transfer:
        overrides = [PAPER_CHECKPOINTS] if paper else [f"train.epochs={tiny.pretrain_epochs}",
                                      f"train.batch_size={tiny.pretrain_batch}",
                                      f"data.input_size={tiny.input_size}"]
        stages.append(Stage("pretrain-breakhis", "pretrain", transfer, "breakhis",
                            "mpcs-op-resnet50" if paper else "demo-pretrain",
                            tuple(overrides), methods=methods))
    if 7 in tables or 8 in tables:
        fr = (BACH_FRACTIONS if paper else tiny.bach_fractions) if 8 in tables else (1.0,)
        overrides = [f"label_fractions={_listed(fr)}", _pretrained(out, methods), KEEP]
        stages.append(Stage("bach", "experiment", tuple(t for t in tables if t in (7, 8)),
                            "bach", "bach-resnet50" if paper else "bach-cpu-small",
                            tuple(overrides + ([] if paper else _tiny_transfer(tiny))),
                            methods=methods))
    if 9 in tables:
        overrides = [_pretrained(out, methods), KEEP] + ([] if paper else
                                                          _tiny_transfer(tiny))
        stages.append(Stage("bcc", "experiment", (9,), "bcc",
                            "bcc-resnet50" if paper else "bcc-cpu-small", tuple(overrides),
                            methods=methods))
    return stages


def stage_config(stage: Stage, strategy: str | None = None) -> dict[str, Any]:
    """The resolved configuration of a stage (of one strategy's run for ``pretrain``)."""
    if stage.kind == "pretrain":
        return resolve(preset=stage.preset, kind="pretrain", overrides=[
            *stage.overrides, f"pairs.strategy={strategy or stage.methods[0]}", "seed=0"])
    return resolve(preset=stage.preset, kind="experiment", overrides=list(stage.overrides))


# --------------------------------------------------------------------------- estimate


#: Published image counts and patches per image the estimate works from.
_BREAKHIS_IMAGES = 7909
_BACH_PATCHES, _BCC_PATCHES = 400 * 35, 58 * 12


def _rate(encoder: str) -> tuple[float, bool]:
    """(views/s on one H100, measured?)."""
    if encoder in H100_VIEWS_PER_S:
        return H100_VIEWS_PER_S[encoder], True
    return H100_VIEWS_PER_S["resnet50_dilated"], False


def _pretrain_views(pcfg: Mapping[str, Any], share: float) -> float:
    """Views of one pre-training: epochs x 2 views x samples (a sample = 4 images)."""
    return pcfg["train"]["epochs"] * 2 * _BREAKHIS_IMAGES / 4 * share


def _finetune_views(fcfg: Mapping[str, Any], units: float, fractions: Sequence[float],
                    mode: str) -> float:
    """Images processed by fine-tuning one init on ``units`` images (or patches) of a fold:
    training on 60 % x fraction, validation on 20 % per epoch."""
    if mode == "linear":  # features once, the head is negligible
        return units * len(fractions)
    epochs = fcfg["train"]["epochs"]
    return sum(units * (0.6 * f + 0.2 * EVAL_COST) * epochs for f in fractions)


def _stage_views(stage: Stage) -> tuple[float, str]:
    """(views the stage processes, encoder) at the stage's settings."""
    if stage.kind == "pretrain":
        pcfg = stage_config(stage)
        return len(stage.methods) * _pretrain_views(pcfg, 1.0), pcfg["model"]["encoder"]
    cfg = stage_config(stage)
    fcfg = resolve(preset=cfg["finetune_preset"], kind="finetune",
                   overrides=cfg["finetune_overrides"])
    inits = len(cfg["methods"]) + 1
    modes = ["finetune", "linear"] if cfg["mode"] == "both" else [cfg["mode"]]
    if stage.dataset == "breakhis":
        pcfg = resolve(preset=cfg["pretrain_preset"], overrides=cfg["pretrain_overrides"])
        pre = len(cfg["methods"]) * _pretrain_views(pcfg, 0.6)
        units = _BREAKHIS_IMAGES
    else:
        pre, units = 0.0, _BACH_PATCHES if stage.dataset == "bach" else _BCC_PATCHES
    tune = sum(_finetune_views(fcfg, units, cfg["label_fractions"], m) for m in modes)
    return cfg["folds"] * (pre + inits * tune), fcfg["model"]["encoder"]


@dataclass
class Estimate:
    """GPU hours per stage on one H100 and the assumptions behind them."""

    hours: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.hours.values())


def estimate_gpu_hours(stages: Sequence[Stage]) -> Estimate:
    """Hours on one H100 from the rates of ``bench/README.md`` (an upper-end estimate:
    early stopping ends most fine-tunings sooner)."""
    est = Estimate()
    for stage in stages:
        views, encoder = _stage_views(stage)
        rate, measured = _rate(encoder)
        est.hours[stage.key] = views / rate / 3600
        if not measured:
            est.notes.append(f"{stage.key}: {encoder} was not measured; taken at the dilated "
                             f"ResNet-50's {rate:,.0f} views/s")
    return est


def format_estimate(est: Estimate, scale: str) -> str:
    """The lines printed before a reproduction starts."""
    lines = ["estimated GPU time on one H100 (bench/README.md: 1,523 views/s for the dilated "
             "ResNet-50 pre-training step; fine-tuning at the same rate, all epochs run):"]
    lines += [f"  {key:20s} about {h:6.1f} h" for key, h in est.hours.items()]
    lines.append(f"  {'total':20s} about {est.total:6.1f} h")
    lines += [f"  note: {n}" for n in est.notes]
    if scale == "cpu-tiny":
        lines.append("cpu-tiny runs these tables at tiny settings on the CPU instead (minutes); "
                     "the hours above are what the paper scale would take")
    return "\n".join(lines)


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- stages


def _run_pretrain_stage(stage: Stage, data: Path, out: Path, progress: bool, say: Say) -> None:
    for strategy in stage.methods:
        run = out / stage.key / strategy
        pcfg = stage_config(stage, strategy)
        if (run / "done.json").exists():
            check_finished_pretraining(run, pcfg)
            say(f"{stage.key}/{strategy}: finished before, kept")
            continue
        say(f"{stage.key}/{strategy}: pre-training on all of {data}")
        summary = pretrain(pcfg, data, run, resume=run.exists(), progress=progress)
        atomic_write_text(run / "done.json", json.dumps(summary, indent=1))


def _run_experiment_stage(stage: Stage, data: Path, out: Path, progress: bool,
                          figures: bool, say: Say) -> int:
    """Run (or continue) the grid; returns its number of failed cells."""
    folder = out / stage.key
    resume = (folder / "config.yaml").exists()
    say(f"{stage.key}: {'continuing' if resume else 'starting'} the grid ({stage.preset})")
    table = run_experiment(stage_config(stage), data, folder, resume=resume, progress=progress)
    failed = int(table["status"].astype(str).str.startswith("failed").sum())
    skipped = int(table["status"].astype(str).str.startswith("skipped").sum())
    say(f"{stage.key}: {len(table) - failed} of {len(table)} cells finished ({skipped} of them "
        f"before this call){f'; {failed} failed (see failures.jsonl)' if failed else ''}")
    if failed < len(table):  # a report needs one finished cell
        write_report(folder, figures=figures)
    return failed


# --------------------------------------------------------------------------- state


def _start(out: Path, scale: str, source: str, tables: Sequence[int], data_root: Path
           ) -> dict[str, Any]:
    """``OUT/reproduce.json``: a second call must keep the scale, source and data folder."""
    path = out / STATE
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if path.is_file():
        state = json.loads(path.read_text())
        for key, value in (("scale", scale), ("source", source), ("data_root", str(data_root))):
            if state.get(key) != value:
                raise ConfigError(f"{out} holds a reproduction with {key} {state.get(key)!r}, "
                                  f"not {value!r}; use another --out")
        state["tables"] = sorted(set(state["tables"]) | set(tables))
        state["calls"].append({"started": now, "tables": list(tables), "mpcs": __version__})
    else:
        state = {"scale": scale, "source": source, "data_root": str(data_root),
                 "tables": sorted(tables),
                 "calls": [{"started": now, "tables": list(tables), "mpcs": __version__}]}
    atomic_write_text(path, json.dumps(state, indent=1))
    return state


def run_reproduce(out: str | Path, tables: Sequence[int] = TABLES,
                  data_root: str | Path | None = None, scale: str = "paper",
                  source: str | None = None, tiny: TinySettings | None = None,
                  allow_differences: bool = False, settings: FetchSettings = DEFAULT_FETCH,
                  figures: bool = True, progress: bool = True, say: Say = print
                  ) -> tuple[Path, int]:
    """Reproduce ``tables`` into ``out`` (module docstring); returns the report and the
    number of failed cells. ``source`` defaults to official data at paper scale and to
    synthetic stand-ins at cpu-tiny; ``tiny`` to :data:`TINY`."""
    tiny = tiny if tiny is not None else TINY
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    source = source or ("official" if scale == "paper" else "synthetic")
    if source not in SOURCES:
        raise ConfigError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    out = Path(out)
    root = Path(data_root) if data_root is not None else out / "data"
    check_output_folder(out)
    lock = lock_folder(out)
    try:
        state = _start(out, scale, source, parse_tables(",".join(map(str, tables))),
                       root.absolute())
        stages = plan_stages(tables, scale, out, tiny)
        say(format_estimate(estimate_gpu_hours(plan_stages(tables, "paper", out)), scale))
        opts = DataOptions(root, source, allow_differences, settings, tiny.sizes)
        names = sorted({s.dataset for s in stages}, key=list(DOWNLOADS).index)
        data = prepare_data(names, opts, progress, say)
        t0, failed = time.perf_counter(), 0
        for stage in stages:
            if stage.kind == "pretrain":
                _run_pretrain_stage(stage, data[stage.dataset], out, progress, say)
            else:
                failed += _run_experiment_stage(stage, data[stage.dataset], out, progress,
                                                figures, say)
        say(f"stages done in {time.perf_counter() - t0:.0f} s")
        all_stages = plan_stages(state["tables"], scale, out, tiny)
        infos = [StageInfo(s.key, s.kind, s.tables, s.dataset, s.slot, out / s.key,
                           stage_config(s)) for s in all_stages]
        report = write_reproduction_report(out, infos, state, root)
    finally:
        lock.close()
    return report, failed
