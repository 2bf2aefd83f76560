"""Using trained models on new images: embeddings, predictions and a plain-timm export.

Everything comes from the checkpoint (no configuration file):

* :func:`embed` writes one row per image (path, BreakHis fields when the name parses, the
  pooled features ``f0..f{D-1}``) to ``.parquet`` (needs pyarrow) or ``.csv``;
* :func:`predict` writes class probabilities and the prediction per image of a fine-tuned
  ``best.pt``, plus a patient-level table ``<out>_patients.csv`` when BreakHis names parse;
* :func:`export_encoder` writes ``model.safetensors``, ``config.json`` and a ``README.md``
  model card in the layout of timm's ``save_for_hf``, so that plain timm loads it
  (``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)``, offline).

Images are decoded with :func:`mpcs.data.images.load_rgb`, resized to the encoder's input size
and normalised with its mean/std (:func:`mpcs.data.transforms.eval_transform`), one image at a
time so that images of different sizes can share a batch.

Written tables go through :mod:`mpcs.core.tables`: a path that starts with ``= + - @`` (or a tab)
is written with an apostrophe in front, so no spreadsheet runs it as a formula, and bytes of a
file name that are not UTF-8 are written as ``\\xNN`` (one warning says how many names); the
returned DataFrame keeps the exact names.

Example:
    >>> df = embed("runs/demo/checkpoints/last.pt", "data/new", "emb.csv")  # doctest: +SKIP
    >>> pred = predict("runs/ft/best.pt", "data/new", "pred.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import CheckpointError, ConfigError, DataError
from mpcs.core.io import atomic_path, atomic_write_text, check_output_file
from mpcs.core.tables import csv_text, safe_frame
from mpcs.data.datasets.breakhis_names import parse_filename
from mpcs.data.images import IMAGE_EXTENSIONS, is_image_file, is_stray_file, load_rgb
from mpcs.data.transforms import eval_transform
from mpcs.hub_export import model_card, read_report, timm_config
from mpcs.models.encoders import Encoder

__all__ = [
    "BREAKHIS_FIELDS",
    "LoadedModel",
    "embed",
    "export_encoder",
    "list_images",
    "load_encoder_from_checkpoint",
    "load_model",
    "predict",
]

log = logging.getLogger(__name__)

#: Columns filled from a BreakHis file name (empty when the name does not parse).
BREAKHIS_FIELDS: tuple[str, ...] = ("patient_id", "label", "subtype", "magnification",
                                    "sequence")

PRETRAIN_KIND = "mpcs-pretrain"
FINETUNE_KIND = "mpcs-finetune"
_NEEDS_FINETUNED = "needs a fine-tuned checkpoint (best.pt from mpcs finetune)"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- images


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files)
                     if is_image_file(f) and not is_stray_file(f))
    return found


def list_images(paths_or_dir: PathLike | Iterable[PathLike], skip_bad: bool = False
                ) -> list[Path]:
    """The image files to process, in a stable order.

    A folder is searched recursively for image files (by extension; stray files such as
    ``Thumbs.db``, notes or hidden files are ignored); explicit files are kept as given.
    A path that does not exist raises :class:`DataError`, or with ``skip_bad`` is logged and
    left out.

    Raises:
        DataError: a missing path, or no image found (the message says where it looked).
    """
    if isinstance(paths_or_dir, (str, os.PathLike)):
        items = [Path(paths_or_dir)]
    else:
        items = [Path(p) for p in paths_or_dir]
    found: list[Path] = []
    for item in items:
        if item.is_dir():
            found.extend(_walk(item))
        elif item.is_file():
            found.append(item)
        elif skip_bad:
            log.warning("%s: not found, left out", item)
        else:
            raise DataError(f"{item}: file or folder not found")
    if not found:
        where = ", ".join(str(p) for p in items[:5]) + (" ..." if len(items) > 5 else "")
        raise DataError(f"no image files found in {where or '(no paths given)'} "
                        f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, recursively in "
                        "folders)")
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique



def breakhis_fields(path: PathLike) -> dict[str, Any]:
    """BreakHis fields of a file name; empty values (None) when the name does not parse."""
    try:
        name = parse_filename(Path(path).name)
    except ValueError:
        return dict.fromkeys(BREAKHIS_FIELDS)
    return {"patient_id": name.patient_id, "label": name.label, "subtype": name.subtype,
            "magnification": name.magnification, "sequence": int(name.sequence)}


# --------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedModel:
    """What a checkpoint gives for inference.

    Attributes:
        kind: ``"mpcs-pretrain"`` or ``"mpcs-finetune"``.
        encoder: the backbone (eval mode, CPU); ``encoder.input_size[-1]`` is the input side.
        input_size: side of the square input the model was trained at.
        head: the projection head (pre-training) or the classifier head (fine-tuned).
        classifier: the whole fine-tuned classifier (None for pre-training checkpoints).
        class_names: output classes of the classifier (empty for pre-training checkpoints).
        path: the checkpoint file.
    """

    kind: str
    encoder: Encoder
    input_size: int
    head: torch.nn.Module | None
    classifier: torch.nn.Module | None
    class_names: list[str] = field(default_factory=list)
    path: Path = Path()


def load_model(path: PathLike) -> LoadedModel:
    """Load a pre-training checkpoint or a fine-tuned ``best.pt`` for inference (CPU, eval).

    Raises:
        CheckpointError: missing or unreadable file, a folder, or not an mpcs checkpoint
            (names it).
    """
    from mpcs.engine.finetune import load_finetuned
    from mpcs.engine.pretrain import load_pretrained

    path = Path(path)
    _refuse_folder(path)
    state = load_checkpoint(path)
    kind = state.get("kind")
    if kind == FINETUNE_KIND:
        model, meta = load_finetuned(path)
        size = int(meta["input_size"])
        return LoadedModel(FINETUNE_KIND, model.encoder.eval(), size, model.head, model,
                           list(model.class_names), path)
    if kind == PRETRAIN_KIND or ("config" in state and "model" in state
                                 and "optimizer" in state):
        try:
            size = int(state["config"]["data"]["input_size"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: pre-training checkpoint without "
                                  "config data.input_size") from None
        del state
        try:
            model = load_pretrained(path).eval()
        except (KeyError, RuntimeError, ConfigError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the pre-trained model ({e})") from None
        encoder = model.encoder
        encoder.input_size = (3, size, size)
        return LoadedModel(PRETRAIN_KIND, encoder, size, model.head, None, [], path)
    raise CheckpointError(f"{path}: not an mpcs checkpoint (kind {kind!r}; expected a "
                          "pre-training checkpoint or a fine-tuned best.pt)")


def _refuse_folder(path: Path) -> None:
    """A folder is not a checkpoint: say so, and name the checkpoint it probably holds."""
    if not path.is_dir():
        return
    inside = [p for p in (path / "best.pt", path / "checkpoints" / "last.pt") if p.is_file()]
    hint = f"; did you mean {inside[0]}?" if inside else (
        "; give a checkpoint file (a run's checkpoints/last.pt or a fine-tuned best.pt)")
    raise CheckpointError(f"{path}: is a folder, not a checkpoint file{hint}")


def load_encoder_from_checkpoint(path: PathLike) -> Encoder:
    """The encoder of a pre-training checkpoint or of a fine-tuned ``best.pt`` (eval, CPU);
    its ``input_size`` is the one the checkpoint was trained at."""
    return load_model(path).encoder


# --------------------------------------------------------------------------- batches


def read_model_input(file: PathLike, input_size: int, mean: Sequence[float],
                     std: Sequence[float], skip_bad: bool = False,
                     skipped: list[tuple[str, str]] | None = None, what: str = ""
                     ) -> tuple[Image.Image, torch.Tensor] | None:
    """Decode ``file`` and pre-process it as evaluation does.

    Returns the RGB image and its ``[1, 3, input_size, input_size]`` normalised tensor. An
    unreadable image raises :class:`DataError` naming it, or with ``skip_bad`` is logged
    (prefixed by ``what``), added to ``skipped`` as ``(path, reason)`` and gives ``None``.
    """
    try:
        image = load_rgb(file)
    except DataError as e:
        if not skip_bad:
            raise
        log.warning("%sskipping unreadable image: %s", f"{what}: " if what else "", e)
        if skipped is not None:
            skipped.append((str(file), str(e)))
        return None
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return image, eval_transform(pixels.permute(2, 0, 1)[None], input_size, tuple(mean),
                                 tuple(std))


def _run_batches(files: Sequence[Path], input_size: int, mean: Sequence[float],
                 std: Sequence[float], fn: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int, skip_bad: bool, progress: bool, desc: str,
                 device: str | torch.device = "cpu"
                 ) -> tuple[list[Path], np.ndarray | None, list[tuple[str, str]]]:
    """Decode, pre-process and run ``fn`` on batches. Returns the kept files, the stacked
    outputs and the ``(path, reason)`` of each image left out."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    kept: list[Path] = []
    skipped: list[tuple[str, str]] = []
    outputs: list[np.ndarray] = []
    mean_t, std_t = tuple(mean), tuple(std)
    bar = tqdm(total=len(files), desc=desc, unit="img", disable=not progress)
    try:
        for start in range(0, len(files), batch_size):
            xs, names = [], []
            for file in files[start:start + batch_size]:
                read = read_model_input(file, input_size, mean_t, std_t, skip_bad, skipped)
                if read is not None:
                    xs.append(read[1])
                    names.append(file)
            if xs:
                with torch.no_grad():
                    out = fn(torch.cat(xs).to(device)).float().cpu().numpy()
                outputs.append(out)
                kept.extend(names)
            bar.update(len(files[start:start + batch_size]))
    finally:
        bar.close()
    return kept, (np.concatenate(outputs) if outputs else None), skipped


def _meta_frame(files: Sequence[Path]) -> pd.DataFrame:
    rows = [{"path": str(f), **breakhis_fields(f)} for f in files]
    df = pd.DataFrame(rows, columns=["path", *BREAKHIS_FIELDS])
    df["sequence"] = df["sequence"].astype("Int64")
    return df


def _check_suffix(out: Path, allowed: Sequence[str]) -> str:
    suffix = out.suffix.lower()
    if suffix not in allowed:
        raise ConfigError(f"{out}: output must end in {' or '.join(allowed)}")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"{out}: writing .parquet needs pyarrow (pip install pyarrow); "
                          f"or write a .csv instead ({out.with_suffix('.csv')})")
    return suffix


def _write_table(df: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        with atomic_path(out) as tmp:
            safe_frame(df, out, formulas=False).to_parquet(tmp, index=False)
    else:
        atomic_write_text(out, csv_text(df, out))


def _skipped_note(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        log.warning("%d unreadable image(s) left out", len(skipped))


# --------------------------------------------------------------------------- embed


def compute_features(loaded: LoadedModel, files: Sequence[Path], projection: bool = False,
                     batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
                     device: str | torch.device = "cpu"
                     ) -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:
    """Pooled backbone features (or, with ``projection``, the projection head's output) of
    ``files``. Returns ``(kept files, float32 [N, D], skipped (path, reason))``."""
    encoder = loaded.encoder.to(device).eval()
    if projection:
        if loaded.kind != PRETRAIN_KIND or loaded.head is None:
            raise ConfigError(f"{loaded.path}: projection features need a pre-training "
                              "checkpoint (a fine-tuned model has no projection head)")
        head = loaded.head.to(device).eval()

        def fn(x: torch.Tensor) -> torch.Tensor:
            return head(encoder(x))
        dim = int(head(torch.zeros(1, encoder.num_features, device=device)).shape[1])
    else:
        fn, dim = encoder, encoder.num_features
    kept, feats, skipped = _run_batches(files, loaded.input_size, encoder.mean, encoder.std,
                                        fn, batch_size, skip_bad, progress, "features", device)
    if feats is None:
        feats = np.zeros((0, dim), np.float32)
    return kept, feats.astype(np.float32, copy=False), skipped


def embed(checkpoint: PathLike, images: PathLike | Iterable[PathLike], out_path: PathLike,
          batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
          device: str | torch.device = "cpu") -> pd.DataFrame:
    """Pooled encoder features of every image, written to ``out_path`` (.parquet or .csv).

    Returns a DataFrame with one row per image kept: ``path``, the BreakHis fields
    (``patient_id, label, subtype, magnification, sequence``; empty when the name does not
    parse) and ``f0..f{D-1}``. ``df.attrs["skipped"]`` lists the images left out with
    ``skip_bad`` (also returned as ``df.attrs["skipped_reasons"]`` with the reasons).

    Raises:
        ConfigError: an output suffix other than .csv/.parquet, or .parquet without pyarrow.
        CheckpointError: an unusable checkpoint.
        DataError: no images, or an unreadable one (without ``skip_bad``), named.
    """
    out = Path(out_path)
    _check_suffix(out, (".parquet", ".csv"))
    loaded = load_model(checkpoint)
    files = list_images(images, skip_bad=skip_bad)
    kept, feats, skipped = compute_features(loaded, files, False, batch_size, skip_bad,
                                            progress, device)
    _skipped_note(skipped)
    fcols = pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
    df = pd.concat([_meta_frame(kept), fcols], axis=1)
    _write_table(df, out)
    df.attrs["skipped"] = [p for p, _ in skipped]
    df.attrs["skipped_reasons"] = list(skipped)
    return df


# --------------------------------------------------------------------------- predict


def patient_table(pred: pd.DataFrame, positive: str = "malignant") -> pd.DataFrame:
    """Patient-level aggregation of image predictions (rows with a patient id only):
    ``patient_id, label, n_images, mean_prob_<positive>, n_<positive>, prediction``.

    The prediction is the majority vote of the image predictions; a tie is broken by the
    mean probability of ``positive`` (>= 0.5 -> ``positive``).
    """
    prob = f"prob_{positive}"
    rows = []
    known = pred[pred["patient_id"].notna() & (pred["patient_id"].astype(str) != "")]
    classes = [c.removeprefix("prob_") for c in pred.columns if c.startswith("prob_")]
    other = next((c for c in classes if c != positive), "benign")
    for pid, g in known.groupby("patient_id", sort=True):
        votes = g["prediction"].value_counts()
        mean_p = float(g[prob].mean())
        top = votes[votes == votes.max()].index.tolist()
        if len(top) == 1:
            vote = str(top[0])
        else:
            vote = positive if mean_p >= 0.5 else other
        labels = sorted(set(g["label"].dropna().astype(str)))
        rows.append({"patient_id": pid, "label": labels[0] if len(labels) == 1 else "",
                     "n_images": len(g), f"mean_{prob}": mean_p,
                     f"n_{positive}": int((g["prediction"] == positive).sum()),
                     "prediction": vote})
    return pd.DataFrame(rows, columns=["patient_id", "label", "n_images", f"mean_{prob}",
                                       f"n_{positive}", "prediction"])


def patients_path(out_csv: PathLike) -> Path:
    """Where :func:`predict` writes the patient table: ``<out>_patients.csv`` beside it."""
    out = Path(out_csv)
    return out.with_name(f"{out.stem}_patients.csv")


def predict(checkpoint: PathLike, images: PathLike | Iterable[PathLike], out_csv: PathLike,
            batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
            device: str | torch.device = "cpu") -> pd.DataFrame:
    """Class probabilities of every image from a fine-tuned ``best.pt``, written to
    ``out_csv``: ``path, prob_<class>..., prediction`` and the BreakHis fields.

    When BreakHis names parse, a patient-level table is written beside it
    (:func:`patients_path`; see :func:`patient_table`) and kept in
    ``df.attrs["patients"]``. ``df.attrs["skipped"]`` lists the images left out.

    Raises:
        CheckpointError: not a fine-tuned checkpoint ("needs a fine-tuned checkpoint").
        DataError: no images, or an unreadable one (without ``skip_bad``), named.
        OutputError: the folder of ``out_csv`` cannot be written (checked before any work).
    """
    out = Path(out_csv)
    _check_suffix(out, (".csv",))
    check_output_file(out)
    loaded = load_model(checkpoint)
    if loaded.kind != FINETUNE_KIND or loaded.classifier is None:
        raise CheckpointError(f"{checkpoint}: predict {_NEEDS_FINETUNED}; this is a "
                              f"{loaded.kind} checkpoint")
    files = list_images(images, skip_bad=skip_bad)
    clf = loaded.classifier.to(device).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(clf(x).float(), dim=1)

    kept, probs, skipped = _run_batches(files, loaded.input_size, loaded.encoder.mean,
                                        loaded.encoder.std, fn, batch_size, skip_bad, progress,
                                        "predict", device)
    _skipped_note(skipped)
    names = loaded.class_names
    if probs is None:
        probs = np.zeros((0, len(names)), np.float32)
    df = pd.DataFrame({"path": [str(f) for f in kept]})
    for i, name in enumerate(names):
        df[f"prob_{name}"] = probs[:, i].astype(np.float64)
    df["prediction"] = [names[i] for i in probs.argmax(axis=1)] if len(probs) else []
    meta = _meta_frame(kept).drop(columns="path")
    df = pd.concat([df, meta], axis=1)
    _write_table(df, out)
    patients = None
    positive = "malignant" if "malignant" in names else names[-1]
    if df["patient_id"].notna().any():
        patients = patient_table(df, positive)
        atomic_write_text(patients_path(out), csv_text(patients, patients_path(out)))
    df.attrs["patients"] = patients
    df.attrs["skipped"] = [p for p, _ in skipped]
    df.attrs["skipped_reasons"] = list(skipped)
    return df


# --------------------------------------------------------------------------- export


def _export_folder(out: Path) -> None:
    """Refuse an export folder that is, or lies under, an existing file (left untouched)."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"lies under the file {existing}"
        raise ConfigError(f"{out}: {where}; export writes model.safetensors and config.json "
                          "into a folder: give a new or existing folder as --out")


def _checkpoint_meta(path: PathLike) -> dict[str, Any]:
    """A checkpoint's records without its tensors (configuration, epoch, ...)."""
    state = load_checkpoint(path)
    return {k: v for k, v in state.items()
            if k not in ("model", "optimizer", "scheduler", "rng")}


def _patients_of(checkpoint: PathLike) -> int | None:
    """Patients a pre-training run used (its ``pretrain_patients.txt``), when beside it."""
    listing = Path(checkpoint).resolve().parent.parent / "pretrain_patients.txt"
    try:
        return len(listing.read_text().split())
    except OSError:
        return None


def export_encoder(checkpoint: PathLike, out_dir: PathLike, report: PathLike | None = None
                   ) -> Path:
    """Write the encoder in the layout of timm's ``save_for_hf``: ``out_dir/model.safetensors``
    (the timm model's state dict), ``out_dir/config.json`` (:func:`mpcs.hub_export.timm_config`:
    ``architecture``, ``num_features``, ``pretrained_cfg`` with input size, mean and std, and
    mpcs's keys ``timm_name, timm_kwargs, input_size, mean, std, source_checkpoint``) and
    ``out_dir/README.md`` (a model card: data, method, pair strategy, epochs, and the tables
    of ``report`` when given). Returns ``out_dir``.

    Load it with timm alone, offline::

        net = timm.create_model("local-dir:OUT_DIR", pretrained=True, num_classes=0)

    (``hf-hub:USER/REPO`` after an upload), and feed images resized to ``input_size``
    (bilinear, antialiased) and normalised with ``mean``/``std``.

    Raises:
        ConfigError: ``out_dir`` is, or lies under, an existing file (checked first; the file
            is left as it is), or ``report`` is missing.
        CheckpointError: an unusable checkpoint (a folder is named as one).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    _export_folder(out)
    card_report = read_report(report) if report is not None else None
    loaded = load_model(checkpoint)
    enc = loaded.encoder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out}: cannot make the export folder ({e.strerror})") from None
    state = {k: v.detach().cpu().contiguous().clone() for k, v in enc.model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, tmp, metadata={"format": "pt", "timm_name": enc.timm_name})
    config = timm_config(enc, loaded.input_size, checkpoint, loaded.kind)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    params = sum(int(v.numel()) for v in state.values())
    card = model_card(config, _checkpoint_meta(checkpoint), params,
                      _patients_of(checkpoint) if loaded.kind == PRETRAIN_KIND else None,
                      card_report)
    atomic_write_text(out / "README.md", card)
    return out
