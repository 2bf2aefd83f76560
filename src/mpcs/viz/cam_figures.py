"""Grad-CAM pictures: the overlay of a map on its image, one PNG per image, and the grid
comparing checkpoints as the paper's Fig. 5 (rows images, columns the input and one overlay
per checkpoint, titled with the checkpoint's label and its predicted probability).

Example:
    >>> grid_figure(["ImageNet", "MPCS-OP"], rows, "predicted", Path("grid.png"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mpcs.core.errors import ConfigError
from mpcs.core.io import atomic_path
from mpcs.viz.cam_maps import resize_map

__all__ = ["CamImage", "display_rgb", "grid_figure", "image_figure", "overlay"]


@dataclass
class CamImage:
    """Grad-CAM of one image by one checkpoint.

    Attributes:
        path: the image file. rgb: the displayed image ``uint8 [H, W, 3]``.
        true_label: the class parsed from the BreakHis name (None when it does not parse or
            is not a class of the model).
        probabilities: ``{class: probability}``. predicted: the argmax class.
        cams: ``{class: map [H, W] in [0, 1]}`` at the displayed size.
        layer: the explained module (``layer4``); map_size: its ``(h, w)`` map;
        last_layer: whether it is the encoder's last stage (the map it pools).
    """

    path: Path
    rgb: np.ndarray
    true_label: str | None
    probabilities: dict[str, float]
    predicted: str
    cams: dict[str, np.ndarray] = field(default_factory=dict)
    layer: str = ""
    map_size: tuple[int, int] | None = None
    last_layer: bool = True

    @property
    def layer_note(self) -> str:
        """``"layer2, 8x8"`` when the map is not of the last stage, else ``""``."""
        if self.last_layer or not self.layer:
            return ""
        size = f", {self.map_size[0]}x{self.map_size[1]}" if self.map_size else ""
        return f"{self.layer}{size}"


def overlay(rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5,
            colormap: str = "jet") -> np.ndarray:
    """Blend a map over an image: ``uint8 [H, W, 3]`` from ``rgb`` ``uint8 [H, W, 3]`` and
    ``cam`` ``[h, w]`` in ``[0, 1]`` (resized to ``H x W`` when its size differs)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"overlay needs an RGB image [H, W, 3], got {rgb.shape}")
    cam = resize_map(cam, rgb.shape[:2])
    heat = matplotlib.colormaps[colormap](np.clip(cam, 0, 1))[..., :3]
    mixed = image_weight * rgb.astype(np.float32) / 255 + (1 - image_weight) * heat
    return np.clip(mixed * 255 + 0.5, 0, 255).astype(np.uint8)


def display_rgb(image: Any, max_side: int) -> np.ndarray:
    """The decoded image as ``uint8 [H, W, 3]``, shrunk so its longer side is ``max_side``."""
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                             Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


def _cam_class(item: CamImage, mode: str) -> str:
    """The class whose map the comparison grid shows for ``mode``."""
    if mode == "predicted":
        return item.predicted
    if mode == "true":
        return item.true_label or item.predicted
    return mode


def _roles(item: CamImage, name: str) -> str:
    roles = [r for r, c in (("predicted", item.predicted), ("true", item.true_label)) if c == name]
    return f"{' = '.join(roles)}: {name}" if roles else name


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)
    return path


def _new_figure(rows: int, cols: int, aspect: float = 1.0, cell: float = 2.6
                ) -> tuple[Any, np.ndarray]:
    """A figure of ``rows x cols`` image panels of height/width ``aspect`` (axes off)."""
    fig = Figure(figsize=(cell * cols, (cell * aspect + 0.45) * rows + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    return fig, axes


def _flat_note(cam: np.ndarray) -> str:
    """A title note for a map without localisation (all zeros: no positive evidence, or a
    1x1 feature map at a small input size)."""
    return " (flat map)" if float(np.max(cam)) <= 0 else ""


def _layer_line(item: CamImage) -> str:
    """A title line naming the explained layer when it is not the last stage."""
    return f"\n{item.layer_note}" if item.layer_note else ""


def _aspect(item: CamImage) -> float:
    h, w = item.rgb.shape[:2]
    return h / max(w, 1)


def _short(path: Path, width: int = 34) -> str:
    name = path.name
    return name if len(name) <= width else name[:width - 3] + "..."


def image_figure(path: Path, per_checkpoint: Sequence[tuple[str, CamImage]], out: Path) -> Path:
    """One PNG for one image: a row per checkpoint, the input then one overlay per class
    (predicted, true, asked), titled with the class's role and probability."""
    cols = 1 + max(len(item.cams) for _, item in per_checkpoint)
    fig, axes = _new_figure(len(per_checkpoint), cols, _aspect(per_checkpoint[0][1]))
    for r, (label, item) in enumerate(per_checkpoint):
        axes[r, 0].imshow(item.rgb)
        truth = f"true: {item.true_label}" if item.true_label else "true: unknown"
        axes[r, 0].set_title(f"{label}\n{truth}", fontsize=8)
        for c, (name, cam) in enumerate(item.cams.items(), start=1):
            axes[r, c].imshow(overlay(item.rgb, cam))
            axes[r, c].set_title(f"{_roles(item, name)}\np={item.probabilities[name]:.2f}"
                                 f"{_flat_note(cam)}{_layer_line(item)}", fontsize=8)
    fig.suptitle(_short(path, 60), fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def grid_figure(labels: Sequence[str], per_image: Sequence[Sequence[CamImage]], mode: str,
                out: Path) -> Path:
    """The Fig.-5-style comparison: rows images, columns the input and one overlay per
    checkpoint, each titled with the checkpoint's label, the class shown and its
    probability."""
    aspect = float(np.median([_aspect(items[0]) for items in per_image]))
    fig, axes = _new_figure(len(per_image), 1 + len(labels), aspect)
    for r, items in enumerate(per_image):
        first = items[0]
        axes[r, 0].imshow(first.rgb)
        axes[r, 0].set_title(f"{_short(first.path)}\ntrue: {first.true_label or 'unknown'}",
                             fontsize=7)
        for c, (label, item) in enumerate(zip(labels, items, strict=True), start=1):
            name = _cam_class(item, mode)
            axes[r, c].imshow(overlay(item.rgb, item.cams[name]))
            shown = "" if name == item.predicted else f", map of {name}"
            prob = item.probabilities[item.predicted]
            axes[r, c].set_title(f"{label}\n{item.predicted} p={prob:.2f}{shown}"
                                 f"{_flat_note(item.cams[name])}{_layer_line(item)}",
                                 fontsize=8)
    fig.tight_layout()
    return _save(fig, out)
