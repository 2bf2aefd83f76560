"""Grad-CAM (Selvaraju et al., 2017) of fine-tuned classifiers on image files.

The pieces: :mod:`mpcs.viz.cam_layers` chooses the explained feature map
(:func:`resolve_target_layer`: by default the map the encoder pools whenever it is at least
4x4 cells at the model's input size, else the deepest stage that is; every title names the
layer when it is not the last stage, e.g. ``layer2, 8x8``, as such a map localises but is
less class-specific); :mod:`mpcs.viz.cam_maps` computes the maps (:class:`GradCAM`, own
hooks, no ``grad-cam`` package); :mod:`mpcs.viz.cam_figures` draws them. The names of all
three are available here.

On files, :func:`explain` computes the maps of one checkpoint (images decoded and resized on
background threads by :func:`mpcs.models.features.iter_inputs`, the pre-processing of
``predict``), and :func:`gradcam_images` writes one PNG per image (the input and the overlays
for the predicted class and, when the BreakHis name gives it, the true class; one row per
checkpoint) and, for two or more checkpoints, a grid as the paper's Fig. 5.

Example:
    >>> model, _ = load_finetuned("runs/ft/best.pt")  # doctest: +SKIP
    >>> with GradCAM(model) as cam:  # doctest: +SKIP
    ...     maps, probs = cam(x)            # x: [B, 3, S, S] normalised; maps: [B, S, S]
    >>> gradcam_images(["imagenet/best.pt", "op/best.pt"], "imgs/", "cams/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mpcs.core.errors import CheckpointError, ConfigError, DataError
from mpcs.data.datasets.breakhis_names import breakhis_fields
from mpcs.data.images import list_images
from mpcs.engine.loading import load_finetuned
from mpcs.models.features import ImageBatch, iter_inputs
from mpcs.viz.cam_figures import CamImage, display_rgb, grid_figure, image_figure, overlay
from mpcs.viz.cam_layers import (
    LAYER_MODES,
    MIN_MAP_SIZE,
    TargetLayer,
    find_target_layer,
    resolve_target_layer,
)
from mpcs.viz.cam_maps import GradCAM, normalise_maps, resize_map

__all__ = [
    "CLASS_MODES",
    "CamImage",
    "GradCAM",
    "LAYER_MODES",
    "MIN_MAP_SIZE",
    "TargetLayer",
    "checkpoint_label",
    "explain",
    "find_target_layer",
    "gradcam_images",
    "grid_figure",
    "image_figure",
    "normalise_maps",
    "overlay",
    "resize_map",
    "resolve_target_layer",
]

log = logging.getLogger(__name__)

#: ``--class`` values besides a class name.
CLASS_MODES: tuple[str, ...] = ("predicted", "true")
_INIT_LABELS = {"imagenet": "ImageNet", "none": "Random init"}


def checkpoint_label(path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> str:
    """A short name for a fine-tuned checkpoint: the method of its experiment cell
    (``cell.json`` beside it), else its initialisation (``ImageNet``, ``Random init``,
    ``MPCS (<pre-training run>)``), else its folder name."""
    path = Path(path)
    cell = path.parent / "cell.json"
    if cell.is_file():
        try:
            return str(json.loads(cell.read_text())["method"])
        except (OSError, ValueError, KeyError):
            pass
    meta = meta or {}
    kind = str(meta.get("init_kind", ""))
    if kind in _INIT_LABELS:
        return _INIT_LABELS[kind]
    if kind == "mpcs-pretrain":
        run = Path(str(meta.get("init", ""))).parent.parent.name
        return f"MPCS ({run})" if run else "MPCS"
    return path.parent.name or path.stem


def _class_index(names: Sequence[str], name: str, where: Path) -> int:
    if name not in names:
        raise ConfigError(f"{where}: class {name!r} is not one of the model's classes "
                          f"{list(names)}")
    return list(names).index(name)


def explain(checkpoint: str | os.PathLike[str], files: Sequence[Path],
            classes: str | Sequence[str] = CLASS_MODES, batch_size: int = 8,
            max_side: int = 384, skip_bad: bool = False,
            device: str | torch.device = "cpu", layer: str = "auto",
            min_size: int = MIN_MAP_SIZE) -> tuple[str, list[CamImage]]:
    """Grad-CAM of every image in ``files`` by one fine-tuned (or linear-eval) ``best.pt``.

    Args:
        classes: which maps to compute per image: ``"predicted"``, ``"true"`` (when the
            BreakHis name gives a class of the model) and/or class names.
        max_side: longer side of the displayed image (and of the maps).
        layer, min_size: the explained layer, ``"auto"``, ``"last"`` or a module name (see
            :func:`resolve_target_layer`); ``"auto"`` avoids the flat maps of a 1x1 last
            stage at small input sizes, at the cost of less class-specific maps.

    Returns:
        ``(label, results)``: :func:`checkpoint_label` and one :class:`CamImage` per image
        kept, in order.

    Raises:
        CheckpointError: not a fine-tuned checkpoint. ConfigError: an unknown class or
            layer name. DataError: an unreadable image (without ``skip_bad``).
    """
    path = Path(checkpoint)
    try:
        model, meta = load_finetuned(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; Grad-CAM needs a fine-tuned or linear-eval best.pt") \
            from None
    wanted = [classes] if isinstance(classes, str) else list(classes)
    names = list(model.class_names)
    for c in wanted:
        if c not in CLASS_MODES:
            _class_index(names, c, path)
    model = model.to(device).eval()
    mean, std = tuple(model.encoder.mean), tuple(model.encoder.std)
    results: list[CamImage] = []
    with GradCAM(model, layer, min_size) as cam:
        chosen = cam.layer
        assert chosen is not None
        _log_layer(path, chosen)
        for batch in iter_inputs(files, int(model.input_size), mean, std, batch_size,
                                 skip_bad, keep_images=True, what="Grad-CAM"):
            if batch.inputs is not None:
                results += _explain_batch(cam, batch, names, wanted, chosen, max_side, device)
    return checkpoint_label(path, meta), results


def _explain_batch(cam: GradCAM, batch: ImageBatch, names: list[str], wanted: list[str],
                   chosen: TargetLayer, max_side: int, device: str | torch.device
                   ) -> list[CamImage]:
    """The maps of one batch: the predicted class's from the first pass, one more pass per
    other class some image needs."""
    items = []
    for file, image in zip(batch.files, batch.images, strict=True):
        true = breakhis_fields(file)["label"]
        items.append(CamImage(Path(file), display_rgb(image, max_side),
                              true if true in names else None, {}, "",
                              layer=chosen.name, last_layer=chosen.is_last))
    assert batch.inputs is not None
    x = batch.inputs.to(device)
    maps, probs = cam(x)  # predicted class
    probs_np = probs.cpu().numpy()
    for item, p in zip(items, probs_np, strict=True):
        item.map_size = cam.map_size
        item.probabilities = {n: float(v) for n, v in zip(names, p, strict=True)}
        item.predicted = names[int(p.argmax())]
    pred_idx = probs_np.argmax(axis=1)
    fixed = [names.index(c) for c in wanted if c not in CLASS_MODES]
    targets: list[list[int]] = []
    for i, item in enumerate(items):
        ks = [int(pred_idx[i])] if "predicted" in wanted else []
        if "true" in wanted and item.true_label:
            ks.append(names.index(item.true_label))
        targets.append(list(dict.fromkeys([*ks, *fixed])))
    needed = {k for i, ks in enumerate(targets) for k in ks if k != pred_idx[i]}
    per_class = {k: cam(x, k)[0].cpu().numpy() for k in sorted(needed)}
    maps_np = maps.cpu().numpy()
    for i, item in enumerate(items):
        h, w = item.rgb.shape[:2]
        for k in targets[i]:
            m = maps_np[i] if k == pred_idx[i] else per_class[k][i]
            item.cams[names[k]] = resize_map(m, (h, w))
    return items


def _log_layer(path: Path, chosen: TargetLayer) -> None:
    """Say which layer is explained when it is not the plain last stage, or cannot localise."""
    h, w = chosen.input_size
    if chosen.map_size == (1, 1):
        log.warning("%s: Grad-CAM of %s, a 1x1 map at the model's input size %dx%d, cannot "
                    "localise (flat maps); use layer 'auto' or a module name such as layer3, "
                    "or train at a larger input size", path, chosen.name, h, w)
    elif not chosen.is_last:
        lh, lw = chosen.last_size
        log.info("%s: Grad-CAM of %s (the last stage is %dx%d at %dx%d px); an intermediate "
                 "map localises but is less class-specific", path, chosen.describe(), lh, lw,
                 h, w)


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:120] or "image"


def gradcam_images(checkpoints: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                   out_dir: str | os.PathLike[str], class_mode: str = "predicted",
                   labels: Sequence[str] | None = None, max_images: int | None = None,
                   grid_images: int = 8, max_side: int = 384, batch_size: int = 8,
                   skip_bad: bool = False, device: str | torch.device = "cpu",
                   grid_name: str = "gradcam_grid.png", layer: str = "auto",
                   min_size: int = MIN_MAP_SIZE) -> list[Path]:
    """Grad-CAM pictures of ``images`` for one or more fine-tuned checkpoints.

    Writes ``out_dir/<image stem>.png`` per image (``<stem>_2.png`` for a second image of the
    same name; rows: checkpoints; columns: the input,
    the overlay of the predicted class, of the true class when known, and of ``class_mode``
    when it names a class) and, with two or more checkpoints, ``out_dir/<grid_name>``
    comparing them on the first ``grid_images`` images (the map of ``class_mode``:
    ``predicted`` - each model's own prediction -, ``true`` - the true class where known -, or
    a class name). ``layer`` (``"auto"``, ``"last"`` or a module name) picks the explained
    layer per checkpoint (:func:`resolve_target_layer`); titles name it when it is not the
    last stage. Returns the written paths, the grid last.

    Raises:
        ConfigError: no checkpoint, an unknown class, labels not matching the checkpoints.
        CheckpointError, DataError: see :func:`explain`.
    """
    ckpts = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if not ckpts:
        raise ConfigError("Grad-CAM needs at least one --checkpoint")
    if labels is not None and len(labels) != len(ckpts):
        raise ConfigError(f"{len(labels)} label(s) for {len(ckpts)} checkpoint(s)")
    if grid_images < 1:
        raise ConfigError(f"grid_images must be >= 1, got {grid_images}")
    files = list_images(images, skip_bad=skip_bad)
    if max_images is not None:
        files = files[:max_images]
    classes = list(CLASS_MODES) + ([class_mode] if class_mode not in CLASS_MODES else [])
    names, runs = [], []
    for ckpt in ckpts:
        name, items = explain(ckpt, files, classes, batch_size, max_side, skip_bad, device,
                              layer=layer, min_size=min_size)
        names.append(name)
        runs.append({str(i.path): i for i in items})
    if labels is not None:
        names = list(labels)
    names = _unique(names)
    common = [f for f in files if all(str(f) in r for r in runs)]
    if not common:
        raise DataError("Grad-CAM: no image could be read")
    out = Path(out_dir)
    written = []
    stems = _unique([_safe_stem(f) for f in common], "_{}")  # same name in two folders
    for f, stem in zip(common, stems, strict=True):
        written.append(image_figure(f, [(n, r[str(f)]) for n, r in zip(names, runs, strict=True)],
                                    out / f"{stem}.png"))
    if len(ckpts) >= 2:
        rows = [[r[str(f)] for r in runs] for f in common[:grid_images]]
        written.append(grid_figure(names, rows, class_mode, out / grid_name))
    return written


def _unique(names: Sequence[str], suffix: str = " ({})") -> list[str]:
    """Make names distinct by numbering repeats (``A``, ``A (2)``)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else n + suffix.format(seen[n]))
    return out
