"""Compare the self-supervised objectives on magnification pairs with one protocol, and a
whole-slide pre-training run on a generated slide.

``compare_methods`` (``mpcs compare-methods``):

1. the synthetic BreakHis-layout demo data (:data:`mpcs.evaluation.demo.DEMO_DATA`), one
   patient split (stratified; the demo's), the SAME data and seed for every method;
2. pre-training of each method of the grid (:data:`METHOD_PRESETS`: one ``cpu-small-*``
   preset per method, ResNet-18 at 48 px from random init) on the training patients only;
3. linear evaluation of the frozen encoder: one logistic-regression probe per magnification
   trained on the training patients' labels, tested on the held-out patients (image- and
   patient-level accuracy), and the same for the random initialisation;
4. ``OUT/methods.csv`` and ``OUT/methods.md`` (a markdown table with pre-training time and
   final loss), plus each run's ``metrics.jsonl`` under ``OUT/runs/<method>``; the
   comparison's settings in ``OUT/config.yaml`` and seed, versions and commit in
   ``OUT/run.json``.

A folder that holds runs is refused unless ``resume``: each method's run then continues from
its last checkpoint, and a finished one (``OUT/runs/<method>/compare.json``) is kept.

``wsi_pretrain_demo`` writes a pyramidal TIFF slide tiled from synthetic tissue and
pre-trains on it with ``data.source=wsi`` and continuous scales.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpcs.config import PRETRAIN_DEFAULTS, resolve
from mpcs.core.errors import ConfigError
from mpcs.core.io import atomic_write_text
from mpcs.core.tables import safe_frame
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.cache import load_images
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.pairs.wsi import write_pyramid_tiff
from mpcs.data.synth.breakhis import SynthConfig, patient_specs, render_sample, write_breakhis
from mpcs.engine.pretrain import RESUME_MAY_DIFFER, build_model, load_pretrained, pretrain
from mpcs.engine.runinfo import check_resumable, write_run_info
from mpcs.evaluation.demo import DEMO_DATA, probe_table, split_patients
from mpcs.models.features import extract_features

log = logging.getLogger(__name__)

#: The grid: method -> pre-training preset (all ResNet-18, 48 px, Adam, same data).
METHOD_PRESETS: dict[str, str] = {
    "mpcs": "cpu-small",
    "simclr": "cpu-small-simclr",
    "byol": "cpu-small-byol",
    "simsiam": "cpu-small-simsiam",
    "barlow_twins": "cpu-small-barlow-twins",
    "vicreg": "cpu-small-vicreg",
}
LABELS = {"mpcs": "MPCS-OP", "simclr": "SimCLR (same image)", "byol": "BYOL (mag. pairs)",
          "simsiam": "SimSiam (mag. pairs)", "barlow_twins": "Barlow Twins (mag. pairs)",
          "vicreg": "VICReg (mag. pairs)"}


def methods_table(results: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Markdown: per method mean ILA/PLA over magnifications, per-magnification ILA,
    pre-training seconds and final loss."""
    head = ("| method | " + " | ".join(f"{m} ILA" for m in MAGNIFICATIONS)
            + " | mean ILA | mean PLA | pre-train s | final loss |")
    lines = [head, "|" + "---|" * (len(MAGNIFICATIONS) + 5)]
    info = runs.set_index("method") if len(runs) else pd.DataFrame()
    for name, g in results.groupby("method", sort=False):
        g = g.set_index("magnification")
        cells = [f"{100 * g.loc[m, 'ila']:.1f}" for m in MAGNIFICATIONS]
        secs = loss = "-"
        if name in info.index:
            secs = f"{info.loc[name, 'seconds']:.0f}"
            continued = info.loc[name].get("continued", False)
            if pd.notna(continued) and bool(continued):
                secs += " (last part)"
            loss = f"{info.loc[name, 'final_loss']:.3f}"
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {100 * g['ila'].mean():.1f} | {100 * g['pla'].mean():.1f} | "
                     f"{secs} | {loss} |")
    return "\n".join(lines)


def compare_methods(out: str | Path, methods: Sequence[str] = tuple(METHOD_PRESETS),
                    epochs: int | None = None, overrides: Sequence[str] = (),
                    synth: SynthConfig | None = None, test_fraction: float = 0.4,
                    progress: bool = True, resume: bool = False) -> pd.DataFrame:
    """Pre-train each of ``methods`` on the demo data and evaluate it by linear probes on
    held-out patients; returns the per-magnification results (also written to ``out``).

    Raises:
        ConfigError: an unknown method, or ``out`` holds runs and ``resume`` is not given.
    """

    unknown = [m for m in methods if m not in METHOD_PRESETS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_PRESETS)}")
    out = Path(out)
    _check_previous_runs(out, resume)
    synth = synth or DEMO_DATA
    root = write_breakhis(out / "data", synth, progress=progress)
    manifest = scan_breakhis(root)
    train_patients, test_patients = split_patients(manifest, test_fraction, synth.seed)
    extra = [*overrides, f"data.patients={train_patients}",
             f"data.cache_dir={out.resolve() / 'cache'}"]
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    cfgs = {m: resolve(preset=METHOD_PRESETS[m], overrides=extra) for m in methods}
    if resume:
        _check_resumable_runs(out, cfgs)
    write_run_info(out, {"methods": list(methods), "presets": {m: METHOD_PRESETS[m] for m in
                                                               methods},
                         "epochs": epochs, "overrides": list(overrides), "synth": asdict(synth),
                         "test_fraction": test_fraction, "seed": synth.seed,
                         "train_patients": train_patients, "test_patients": test_patients},
                   resume=resume)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    pixels = None
    for method, cfg in cfgs.items():
        if pixels is None:  # random init reference: the same seed's untrained encoder
            size = cfg["data"]["input_size"]
            pixels = load_images(manifest["path"].tolist(), size, cache_dir=out / "cache",
                                 progress=progress)
            torch.manual_seed(cfg["seed"])
            feats = extract_features(build_model(cfg).encoder, pixels, size)
            rows += [{**r, "method": "random init"} for r in
                     probe_table("random init", feats, manifest, train_patients, cfg["seed"])]
        run, checkpoint = _pretrain_method(method, cfg, root, out / "runs" / method, resume,
                                           progress)
        enc = load_pretrained(checkpoint).encoder
        feats = extract_features(enc, pixels, cfg["data"]["input_size"])
        rows += [{**r, "method": run["method"]} for r in
                 probe_table(run["method"], feats, manifest, train_patients, cfg["seed"])]
        runs.append(run)
    results = pd.DataFrame(rows)
    run_table = pd.DataFrame(runs)
    safe_frame(results).to_csv(out / "methods.csv", index=False)
    safe_frame(run_table).to_csv(out / "methods_runs.csv", index=False)
    table = methods_table(results, run_table)
    n_epochs = run_table["epochs"].iloc[0] if len(run_table) else 0
    atomic_write_text(out / "methods.md", (
        "# Self-supervised objectives on the synthetic demo data\n\n"
        f"Synthetic BreakHis-layout data ({len(manifest)} images, "
        f"{manifest['patient_id'].nunique()} patients). Every method pre-trains ResNet-18 at "
        f"48x48 from the same random initialisation for {n_epochs} epochs on the same "
        f"{len(train_patients)} training patients (presets: "
        + ", ".join(f"`{METHOD_PRESETS[m]}`" for m in methods) + "). Linear evaluation: one "
        f"logistic-regression probe per magnification on frozen features, trained on the "
        f"training patients, tested on {len(test_patients)} held-out patients. ILA / PLA = "
        f"image- / patient-level accuracy (%).\n\n{table}\n"))
    print("\n" + table, flush=True)
    return results


def _check_previous_runs(out: Path, resume: bool) -> None:
    """Refuse, before any work, a folder that holds runs unless they are to be continued."""
    runs = out / "runs"
    previous = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    if previous and not resume:
        raise ConfigError(f"{out} already holds a comparison (runs of {', '.join(previous)}); "
                          "add --resume to continue it (finished methods are kept) or choose "
                          "another --out")


def _check_resumable_runs(out: Path, cfgs: Mapping[str, Mapping[str, Any]]) -> None:
    """Before any pre-training: every run in ``out`` that ``cfgs`` continues or keeps was
    made with the same settings (those ``pretrain --resume`` lets change aside)."""
    for method, cfg in cfgs.items():
        try:
            check_resumable(out / "runs" / method / "config.yaml", cfg, PRETRAIN_DEFAULTS,
                            RESUME_MAY_DIFFER)
        except ConfigError as e:
            raise ConfigError(f"compare-methods --resume: {method}: {e}") from None


def _finished_record(record: Path) -> dict[str, Any] | None:
    """The ``compare.json`` of a finished method, or None where there is none; one that
    cannot be read is named in a warning and the run is continued from its checkpoint."""
    if not record.is_file():
        return None
    try:
        done = json.loads(record.read_text())
        checkpoint = record.parent / done["checkpoint"]
        if checkpoint.is_file() and isinstance(done["row"], dict):
            return done
        reason = f"its checkpoint {checkpoint} is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = f"unreadable ({type(e).__name__}: {e})"
    log.warning("%s: %s; continuing the run from its last checkpoint instead", record, reason)
    return None


def _pretrain_method(method: str, cfg: dict[str, Any], root: Path, run_dir: Path,
                     resume: bool, progress: bool) -> tuple[dict[str, Any], Path]:
    """Pre-train ``method`` in ``run_dir`` (continued on ``resume``; a finished run is
    kept); returns its row of ``methods_runs.csv`` and its checkpoint. ``seconds`` is the
    wall time of this call's part; ``continued`` says an earlier call made the first part."""
    record = run_dir / "compare.json"
    done = _finished_record(record) if resume else None
    if done is not None:  # its settings were checked by _check_resumable_runs
        log.info("%s: finished in an earlier run, kept", LABELS[method])
        return done["row"], run_dir / done["checkpoint"]
    continued = resume and (run_dir / "checkpoints" / "last.pt").is_file()
    t0 = time.perf_counter()
    summary = pretrain(cfg, root, run_dir, resume=resume, progress=progress)
    seconds = time.perf_counter() - t0
    row = {"method": LABELS[method], "preset": METHOD_PRESETS[method], "seconds": seconds,
           "continued": continued, "final_loss": summary["final_loss"],
           "epochs": summary["epochs"], "steps": summary["global_step"]}
    checkpoint = Path(summary["checkpoint"]).resolve()
    atomic_write_text(record, json.dumps({
        "row": row, "checkpoint": checkpoint.relative_to(run_dir.resolve()).as_posix()},
        indent=1))
    print(f"[compare] {row['method']}: {row['steps']} steps in {seconds:.0f} s"
          f"{' (continued)' if continued else ''}, final loss {row['final_loss']:.3f}",
          flush=True)
    return row, checkpoint


def synthetic_slide_rgb(grid: tuple[int, int] = (3, 4), tile: int = 256, margin: int = 64,
                        seed: int = 0) -> np.ndarray:
    """An RGB slide ``[H, W, 3]``: a grid of synthetic tissue fields (the 40X renders of
    :mod:`mpcs.data.synth`, one patient per tile, benign and malignant alternating) on white
    glass with a margin."""
    rows, cols = grid
    cfg = SynthConfig(patients=max(2, rows * cols), samples_per_patient=1,
                      image_size=(tile, tile), seed=seed)
    specs = patient_specs(cfg)
    h, w = rows * tile + 2 * margin, cols * tile + 2 * margin
    rgb = np.full((h, w, 3), 244, np.uint8)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        img = render_sample(cfg, specs[k], 0)["40X"]
        rgb[margin + r * tile:margin + (r + 1) * tile,
            margin + c * tile:margin + (c + 1) * tile] = img
    return rgb


def wsi_pretrain_demo(out: str | Path, method: str = "mpcs", epochs: int = 3,
                      overrides: Sequence[str] = (), progress: bool = True,
                      resume: bool = False) -> dict[str, Any]:
    """Write ``out/slides/synthetic-slide.tif`` (pyramidal, 0.5 µm/pixel) and pre-train on
    it with ``data.source=wsi`` and continuous scales in [1, 4] (``resume``: continue the
    run in ``out/run``); returns the summary with the slide path and the run's seconds."""
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    slide = write_pyramid_tiff(out / "slides" / "synthetic-slide.tif", synthetic_slide_rgb(),
                               mpp=0.5, levels=3)
    cfg = resolve(preset=METHOD_PRESETS.get(method, "cpu-small"), overrides=[
        "data.source=wsi", "pairs.strategy=continuous", "pairs.scale_range=[1.0, 4.0]",
        "pairs.log_scales=true", "wsi.mpp_at_1x=2.0", "wsi.locations_per_slide=128",
        f"train.epochs={epochs}", "train.checkpoint_every=1", *overrides])
    t0 = time.perf_counter()
    summary = pretrain(cfg, out / "slides", out / "run", resume=resume, progress=progress)
    summary.update({"slide": str(slide), "seconds": time.perf_counter() - t0})
    print(f"[wsi] {summary['pair_samples']} tissue locations, {summary['global_step']} steps "
          f"in {summary['seconds']:.0f} s, final loss {summary['final_loss']:.3f}", flush=True)
    return summary
