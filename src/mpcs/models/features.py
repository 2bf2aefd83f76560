"""The one feature extractor: images in, model outputs out, at the speed of the model.

Two inputs, one pre-processing (:func:`mpcs.data.transforms.eval_transform`: the whole image
resized to the square input, bilinear with antialiasing, then normalised with the encoder's
mean and std), the forward under ``torch.inference_mode`` on channels-last batches:

* :func:`extract_features`: uint8 images already in memory ``[N, 3, H, W]`` (the decoded
  image cache): linear evaluation, the kNN monitor, the real-data probe;
* :func:`run_on_files`: image files (``mpcs embed``, ``predict``, ``tsne``, the report's
  t-SNE, Grad-CAM inputs). Decoding and resizing run on background threads (Pillow and torch
  release the GIL; each thread uses one intra-op thread) a few batches ahead of the forward,
  and batches come out one at a time, so memory stays flat however many files there are.
  Results are the same as decoding and resizing one image at a time
  (:func:`read_model_input`) and running the model on it, to float rounding.
  :func:`file_features` collects the features of files in memory.

Example:
    >>> import numpy as np
    >>> from mpcs.models import create_encoder
    >>> enc = create_encoder("resnet18", weights="none")
    >>> extract_features(enc, np.zeros((2, 3, 40, 40), np.uint8), input_size=32).shape
    (2, 512)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.runtime import autocast_for
from mpcs.data.images import load_rgb
from mpcs.data.loader import Prefetcher, pin
from mpcs.data.transforms import eval_transform
from mpcs.models.encoders import Encoder

__all__ = ["ImageBatch", "auto_workers", "batching", "extract_features", "file_features",
           "inference_device", "iter_inputs", "read_model_input", "run_on_files"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
#: Most background decoding threads :func:`auto_workers` picks.
MAX_AUTO_WORKERS = 16


def inference_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else the CPU) or the named device.

    Raises:
        ConfigError: an unknown device, or CUDA on a machine without it.
    """
    if isinstance(name, torch.device):
        dev = name
    elif name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name}: CUDA is not available on this machine; use cpu")
    return dev


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def extract_features(encoder: Encoder, pixels: np.ndarray, input_size: int,
                     batch_size: int = 256, device: str | torch.device = "cpu",
                     channels_last: bool = True) -> np.ndarray:
    """Pooled features of uint8 images ``[N, 3, H, W]`` -> float32 ``[N, num_features]``;
    the encoder runs in eval mode (its mode is restored afterwards)."""
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(pixels), batch_size):
                x = torch.from_numpy(np.array(pixels[i:i + batch_size])).to(device)
                x = eval_transform(x, input_size, tuple(encoder.mean), tuple(encoder.std))
                if channels_last:
                    x = _channels_last(x)
                out.append(encoder(x).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, encoder.num_features), np.float32)


# --------------------------------------------------------------------------- one file


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
    return image, _to_input(image, input_size, tuple(mean), tuple(std))


def _to_input(image: Image.Image, input_size: int, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return eval_transform(pixels.permute(2, 0, 1)[None], input_size, mean, std)


# --------------------------------------------------------------------------- many files


@dataclass
class ImageBatch:
    """One batch of :func:`iter_inputs` / :func:`run_on_files`.

    Attributes:
        files: the files of the batch that were read, in order.
        inputs: their normalised model inputs ``[len(files), 3, S, S]`` (channels-last; None
            when no file of the batch was readable).
        skipped: ``(path, reason)`` of the batch's unreadable files (with ``skip_bad``).
        images: the decoded RGB images (only with ``keep_images``).
        outputs: the model's output, float32 numpy ``[len(files), ...]`` (:func:`run_on_files`).
    """

    files: list[Path]
    inputs: torch.Tensor | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    outputs: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))


def auto_workers() -> int:
    """Background decoding threads by default: one per CPU core, at most
    :data:`MAX_AUTO_WORKERS`. They sleep once two batches are decoded ahead, so they cost
    nothing while waiting; more than one fills the first batches faster (the model waits
    for them) and keeps a GPU fed (decoding a 700x460 PNG and resizing it takes about 13 ms
    of one core)."""
    return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def batching(batch_size: int, workers: int | None) -> int:
    """Check the batch size and return the decoding threads (None: :func:`auto_workers`).

    Raises:
        ConfigError: ``batch_size`` < 1 or ``workers`` < 0.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    workers = auto_workers() if workers is None else int(workers)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    return workers


def ramp(batch_size: int, done: int) -> int:
    """Size of batch number ``done`` (from 0): an eighth of ``batch_size``, doubling up to
    it, so that the model starts on the first images while the next ones are decoded
    (a whole first batch of 64 PNGs of 700x460 takes a second to decode on one core)."""
    return min(batch_size, max(1, batch_size // 8) << min(done, 30))


_Decoded = tuple[Path, "torch.Tensor | None", "Image.Image | None", str]
_THREAD = threading.local()
_OPENMP = "OpenMP" in torch.__config__.parallel_info()


def _decoder(input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
             keep_images: bool, background: bool) -> Callable[[Path], _Decoded]:
    """``file -> (file, input [3, S, S] or None, image or None, reason)``: an unreadable
    file gives ``None`` and its :class:`DataError` text. In a ``background`` thread torch
    runs on one intra-op thread (with OpenMP the setting is per thread: the forward keeps
    its own)."""
    def decode(file: Path) -> _Decoded:
        if background and _OPENMP and not getattr(_THREAD, "one", False):
            torch.set_num_threads(1)
            _THREAD.one = True
        try:
            image = load_rgb(file)
        except DataError as e:
            return file, None, None, str(e)
        x = _to_input(image, input_size, mean, std)[0]
        return file, x, image if keep_images else None, ""
    return decode


def iter_inputs(files: Sequence[PathLike], input_size: int, mean: Sequence[float],
                std: Sequence[float], batch_size: int = 64, skip_bad: bool = False,
                workers: int | None = None, keep_images: bool = False, what: str = "",
                progress: bool = False, desc: str = "images") -> Iterator[ImageBatch]:
    """The pre-processed images of ``files`` in batches of ``batch_size`` files (the first
    ones smaller: :func:`ramp`; fewer inputs where files were unreadable), decoded and
    resized by ``workers`` background threads (None: :func:`auto_workers`; 0: in this
    thread) up to two batches ahead of the batch in use. An unreadable file raises its
    :class:`DataError` when its turn comes, or with ``skip_bad`` is logged (prefixed by
    ``what``) and listed in the batch's ``skipped``.

    Raises:
        ConfigError: ``batch_size`` < 1 or ``workers`` < 0.
        DataError: an unreadable image (without ``skip_bad``).
    """
    workers = batching(batch_size, workers)
    paths = [Path(f) for f in files]
    if workers:
        # fixes this thread's intra-op thread count before a helper thread sets its own
        # (torch reads the last setting when a thread first runs a parallel op)
        torch.get_num_threads()
    decode = _decoder(input_size, tuple(mean), tuple(std), keep_images, workers > 0)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    batch: list[_Decoded] = []
    done = 0
    try:
        with Prefetcher(decode, paths, workers=workers, depth=2 * batch_size) as decoded:
            for i, item in enumerate(decoded, start=1):
                batch.append(item)
                if len(batch) == ramp(batch_size, done) or i == len(paths):
                    yield _collect(batch, skip_bad, what)
                    bar.update(len(batch))
                    batch, done = [], done + 1
    finally:
        bar.close()


def _collect(batch: list[_Decoded], skip_bad: bool, what: str) -> ImageBatch:
    kept, xs, images, skipped = [], [], [], []
    for file, x, image, reason in batch:
        if x is None:
            if not skip_bad:
                raise DataError(reason)
            log.warning("%sskipping unreadable image: %s", f"{what}: " if what else "", reason)
            skipped.append((str(file), reason))
            continue
        kept.append(file)
        xs.append(x)
        if image is not None:
            images.append(image)
    inputs = _channels_last(torch.stack(xs)) if xs else None
    return ImageBatch(kept, inputs, skipped, images)


def run_on_files(fn: Callable[[torch.Tensor], torch.Tensor], files: Sequence[PathLike],
                 input_size: int, mean: Sequence[float], std: Sequence[float],
                 batch_size: int = 64, skip_bad: bool = False, progress: bool = False,
                 desc: str = "images", device: str | torch.device = "cpu",
                 workers: int | None = None, amp: str = "off") -> Iterator[ImageBatch]:
    """``fn`` on the batches of :func:`iter_inputs` (same arguments), each on ``device``
    under ``torch.inference_mode``, with autocast when ``amp`` asks for it (``"bf16"``,
    ``"fp16"``; ``"auto"``: bf16 on CUDA only; :func:`mpcs.core.runtime.autocast_for`), while
    the next batches are decoded; ``outputs`` are float32 numpy.
    """
    dev = inference_device(device)
    for batch in iter_inputs(files, input_size, mean, std, batch_size, skip_bad, workers,
                             progress=progress, desc=desc):
        if batch.inputs is not None:
            x = pin(batch.inputs, dev.type == "cuda").to(dev, non_blocking=True)
            with torch.inference_mode(), autocast_for(dev, amp):
                batch.outputs = fn(x).float().cpu().numpy()
            batch.inputs = None  # the outputs are what is kept
        yield batch


def file_features(encoder: Encoder, files: Sequence[PathLike],
                  head: torch.nn.Module | None = None, input_size: int | None = None,
                  batch_size: int = 64, skip_bad: bool = False, progress: bool = True,
                  device: str | torch.device = "cpu", workers: int | None = None,
                  amp: str = "off") -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:
    """Pooled features of image files (or, with ``head``, ``head``'s output on them), in
    memory: ``(kept files, float32 [N, D], skipped (path, reason))``. ``input_size``
    defaults to the encoder's; see :func:`run_on_files` for the rest."""
    size = int(input_size or encoder.input_size[-1])
    device = inference_device(device)
    encoder = encoder.to(device).eval()
    fn: Callable[[torch.Tensor], torch.Tensor] = encoder
    if head is not None:
        head = head.to(device).eval()
        fn = torch.nn.Sequential(encoder, head)
    kept: list[Path] = []
    outs: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for b in run_on_files(fn, files, size, encoder.mean, encoder.std, batch_size, skip_bad,
                          progress, "features", device, workers, amp):
        kept += b.files
        skipped += b.skipped
        if b.files:
            outs.append(b.outputs)
    if outs:
        return kept, np.concatenate(outs).astype(np.float32, copy=False), skipped
    with torch.inference_mode():
        probe = torch.zeros(1, encoder.num_features, device=device)
        dim = int(head(probe).shape[1]) if head is not None else encoder.num_features
    return kept, np.zeros((0, dim), np.float32), skipped
