"""Reading histopathology images safely: every failure is a :class:`DataError` naming the file.

Two entry points for one file:

* :func:`check_image` is the cheap check used while scanning a dataset. It opens the file,
  lets Pillow parse the header (format signature, size, mode) and, for PNG, checks that the
  file still ends with its ``IEND`` chunk (one small read at the end of the file), which
  catches the common case of a file cut short by an interrupted copy or download. It does
  NOT decode the pixels: damage inside the compressed data of an otherwise well-formed file
  (or a truncated JPEG/TIFF) only surfaces when the image is decoded by :func:`load_rgb`.
* :func:`load_rgb` fully decodes an image and always returns an 8-bit ``"RGB"`` image,
  whatever the stored mode (grayscale, alpha, palette, 16-bit, CMYK, ...).

:func:`list_images` lists the image files of folders and explicit paths (stray files left
out), the input of ``mpcs embed``, ``predict``, ``tsne`` and ``gradcam``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mpcs.core.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "STRAY_FILES",
    "check_image",
    "is_image_file",
    "is_stray_file",
    "list_images",
    "load_rgb",
]

logger = logging.getLogger(__name__)

#: File extensions (lower case, with the dot) treated as images when scanning folders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})

#: Glob patterns (matched case-insensitively against the file name) of files that are
#: ignored when scanning a dataset folder: OS metadata, notes and tables that ship next to
#: the images, and hidden files (``.*``, which also covers macOS ``._name`` resource forks).
STRAY_FILES: tuple[str, ...] = (
    "thumbs.db",
    ".ds_store",
    "desktop.ini",
    "*.txt",
    "*.csv",
    "*.md",
    ".*",
)

#: How many bytes at the end of a PNG are searched for the IEND chunk type. A valid PNG ends
#: with exactly the 12-byte IEND chunk; a little slack tolerates writers that append a few
#: bytes after it.
_PNG_TAIL_BYTES = 1024

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT_MODES_16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def is_stray_file(name: str) -> bool:
    """Return True if ``name`` (a bare file name) is a known stray file to ignore."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in STRAY_FILES)


def is_image_file(name: str) -> bool:
    """Return True if ``name`` has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files)
                     if is_image_file(f) and not is_stray_file(f))
    return found


def list_images(paths_or_dir: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                skip_bad: bool = False) -> list[Path]:
    """The image files to process, in a stable order, each once.

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
            logger.warning("%s: not found, left out", item)
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


def _check_file(path: Path) -> None:
    """Raise :class:`DataError` if ``path`` is missing, a folder, or empty."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")


def _png_is_complete(path: Path) -> bool:
    """Return True if a PNG file still ends with its IEND chunk (reads only the file's tail)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - _PNG_TAIL_BYTES))
        tail = handle.read()
    return b"IEND" in tail


def _require_png_end(path: Path) -> None:
    """Raise :class:`DataError` if the PNG at ``path`` was cut short (no IEND chunk)."""
    try:
        complete = _png_is_complete(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not complete:
        raise DataError(f"{path}: truncated or corrupt image: PNG data ends early (no IEND chunk)")


def _open_error(path: Path, exc: Exception) -> DataError:
    """Translate an exception raised by Pillow while opening/decoding into a DataError."""
    if isinstance(exc, UnidentifiedImageError):
        return DataError(f"{path}: not an image file (cannot identify format)")
    if isinstance(exc, Image.DecompressionBombError):
        return DataError(f"{path}: image is too large to open safely ({exc})")
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: file not found")
    if isinstance(exc, PermissionError):
        return DataError(f"{path}: permission denied")
    message = str(exc).strip() or type(exc).__name__
    return DataError(f"{path}: truncated or corrupt image: {message}")


# Pillow raises many exception types for damaged files (OSError, SyntaxError for bad PNG
# chunks, struct.error, EOFError, ValueError, ...). They are caught only around Pillow calls
# and always re-raised as DataError, so the user never sees a bare Pillow traceback.
_PIL_ERRORS = (Exception,)


def check_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Cheaply check that ``path`` is a readable image and return its ``(width, height)``.

    Reads only the header (and, for PNG, the last kilobyte to find the IEND chunk); pixel
    data is not decoded, so corruption inside the compressed data is reported later, by
    :func:`load_rgb`.

    Raises:
        DataError: ``"<path>: <reason>"`` where the reason is one of "file not found",
            "file is empty (0 bytes)", "not an image file (cannot identify format)" or
            "truncated or corrupt image: <detail>".
    """
    file = Path(path)
    _check_file(file)
    try:
        with Image.open(file) as image:
            width, height = image.size
            image_format = image.format
    except _PIL_ERRORS as exc:
        raise _open_error(file, exc) from None
    if width <= 0 or height <= 0:
        raise DataError(f"{file}: truncated or corrupt image: size is {width}x{height}")
    if image_format == "PNG":
        _require_png_end(file)
    return int(width), int(height)


def _bit_depth(image: Image.Image, array: np.ndarray) -> int:
    """Return the bit depth to scale a single-channel integer image by.

    16-bit modes (``I;16*``) use 16 bits, or fewer if a TIFF declares them (12-bit data
    stored in 16-bit samples). The 32-bit mode ``I`` is used by Pillow both for 16-bit data
    and for true 32-bit data, so its depth is taken from the values: 16 bits if they all fit,
    32 otherwise.
    """
    if image.mode in _INT_MODES_16:
        declared = _declared_tiff_bits(image)
        return declared if declared is not None and declared <= 16 else 16
    maximum = int(array.max()) if array.size else 0
    return 16 if maximum <= 0xFFFF else 32


def _declared_tiff_bits(image: Image.Image) -> int | None:
    """The TIFF BitsPerSample of ``image``, or None if it is not a TIFF or has no tag."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    bits = tags.get(258)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) and 1 <= bits <= 32 else None


def _integer_to_rgb(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit single-channel integer image to 8 bits by its bit depth."""
    array = np.asarray(image).astype(np.float64)
    bits = _bit_depth(image, array)
    scale = 255.0 / float((1 << bits) - 1)
    scaled = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _float_to_rgb(image: Image.Image) -> Image.Image:
    """Map a float image to 8 bits: values in [0, 1] are scaled by 255, others clipped."""
    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if array.size and array.min() >= 0.0 and array.max() <= 1.0:
        array = array * 255.0
    scaled = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _alpha_to_rgb(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded Pillow image of any mode to a new 8-bit RGB image."""
    mode = image.mode
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _alpha_to_rgb(image)
    if mode in _INT_MODES_16 or mode == "I":
        return _integer_to_rgb(image)
    if mode == "F":
        return _float_to_rgb(image)
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Fully decode the image at ``path`` and return it as an 8-bit ``"RGB"`` image.

    Conversions: grayscale (``L``, ``1``) is replicated to three channels; images with
    transparency (``RGBA``, ``LA``, palette with transparency) are composited on white;
    palette images are expanded; 16-bit (``I;16``) and 32-bit (``I``) integer images are
    scaled to 8 bits by their bit depth (65535 -> 255 for 16-bit data, not clipped); CMYK and
    other modes use Pillow's conversion. Multi-page files (TIFF) yield their first page.

    Raises:
        DataError: ``"<path>: <reason>"`` for a missing, empty, unidentifiable, truncated or
            corrupt file, or a colour mode that cannot be converted. Never a bare Pillow error.
    """
    file = Path(path)
    _check_file(file)
    try:
        with Image.open(file) as image:
            if image.format == "PNG":
                # Also catches truncation when ImageFile.LOAD_TRUNCATED_IMAGES is set globally.
                _require_png_end(file)
            image.load()
            try:
                return _to_rgb(image)
            except (ValueError, OSError) as exc:
                raise DataError(
                    f"{file}: cannot convert colour mode {image.mode!r} to RGB ({exc})"
                ) from None
    except DataError:
        raise
    except _PIL_ERRORS as exc:
        raise _open_error(file, exc) from None
