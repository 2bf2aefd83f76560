"""The ``breakhis`` pair source: samples (patient, sequence number) of a BreakHis-layout folder
seen at two of their magnifications.

The paper pairs only samples present at all four magnifications
(``pairs.complete_only=true``, the default). Real collections are incomplete: with
``pairs.complete_only=false`` every sample that has the magnifications its strategy needs
takes part (fixed: 200X and 400X; ordered: a magnification and its successor in the lookup
table; random: any two), and each pair is drawn among the magnifications the sample has
(:class:`mpcs.data.pairs.PresentMagnifications`).

Example:
    >>> samples = pair_samples("BreaKHis_v1", strategy="fixed",
    ...                        complete_only=False)                       # doctest: +SKIP
    >>> data = PairData(samples, 224, cache_dir=None)                     # doctest: +SKIP
    >>> v1, v2 = data.views(np.arange(8), mag1, mag2)                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mpcs.core.errors import DataError
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.cache import load_images_with_report, quiet_pil_warnings, with_skip_hint
from mpcs.data.datasets.breakhis import magnification_samples, scan_breakhis
from mpcs.data.pairs.samplers import (
    MAGNIFICATION_SCALES,
    PairSampler,
    PresentMagnifications,
    RowSampler,
    SameImagePair,
    create_pair_sampler,
)

log = logging.getLogger(__name__)

PATH_COLUMNS = [f"path_{m}" for m in MAGNIFICATIONS]


def present_magnifications(samples: pd.DataFrame) -> np.ndarray:
    """bool ``[n, 4]``: which of :data:`MAGNIFICATIONS` each sample row has an image at."""
    return samples[PATH_COLUMNS].notna().to_numpy()


def pair_samples(data_dir: str | Path, patients: Sequence[str] | None = None,
                 on_bad_image: str = "error", strategy: str = "ordered",
                 complete_only: bool = True) -> pd.DataFrame:
    """The samples that can form pairs, restricted to ``patients`` if given: those at all four
    magnifications, or (``complete_only=False``) those with the magnifications ``strategy``
    needs. ``path_<mag>`` is None where a sample lacks ``mag``.

    With ``on_bad_image="skip"`` unreadable images are left out (their samples lose that
    magnification) and listed in ``samples.attrs["skipped"]`` as ``(path, reason)`` pairs.

    Raises :class:`DataError` when nothing is left to pre-train on, saying why.
    """
    try:
        with quiet_pil_warnings():
            manifest = scan_breakhis(data_dir, on_bad_image=on_bad_image)
    except DataError as err:
        raise with_skip_hint(err) from None
    skipped = list(manifest.attrs.get("skipped", []))
    if patients is not None:
        wanted = set(map(str, patients))
        unknown = sorted(wanted - set(manifest["patient_id"]))
        if unknown:
            raise DataError(f"{data_dir}: patients not in the data set: {', '.join(unknown[:5])}")
        manifest = manifest[manifest["patient_id"].isin(wanted)]
    table = magnification_samples(manifest)
    present = present_magnifications(table)
    complete = present.all(axis=1)
    keep = complete if complete_only else _sampler(strategy).eligible(present)
    samples = table[keep].reset_index(drop=True)
    if samples.empty:
        raise DataError(_nothing_to_pair(data_dir, manifest, table, strategy, complete_only,
                                         len(skipped)))
    log.info("pairs: %d samples for strategy %s (%d at all four magnifications, %d with "
             "fewer); %d of the %d samples left out%s", len(samples), strategy,
             int(complete[keep].sum()), int((~complete[keep]).sum()), len(table) - len(samples),
             len(table), "" if complete_only else
             " (they lack the magnifications the strategy needs)")
    samples.attrs["skipped"] = skipped
    return samples


def _sampler(strategy: str) -> PairSampler:
    return create_pair_sampler(strategy)


def _nothing_to_pair(data_dir: str | Path, manifest: pd.DataFrame, table: pd.DataFrame,
                     strategy: str, complete_only: bool, skipped: int) -> str:
    per_mag = manifest.groupby("magnification").size().reindex(MAGNIFICATIONS, fill_value=0)
    counts = ", ".join(f"{m} {n}" for m, n in per_mag.items())
    left_out = f"; {skipped} unusable images were skipped" if skipped else ""
    found = (f"found {len(manifest)} images of {manifest['patient_id'].nunique()} patients "
             f"({counts}) in {len(table)} samples{left_out}")
    if complete_only:
        multi = int((present_magnifications(table).sum(axis=1) >= 2).sum())
        hint = (f" {multi} samples have two or more magnifications: "
                f"--set pairs.complete_only=false pairs them" if multi else "")
        return (f"{data_dir}: no sample is present at all four magnifications, so MPCS has no "
                f"pairs to train on. A sample is (patient, sequence number) and needs one image "
                f"at each of 40X, 100X, 200X and 400X with the same sequence number; {found} "
                f"and 0 complete samples.{hint}")
    need = {"fixed": "200X and 400X", "fp": "200X and 400X",
            "ordered": "a magnification and its successor (40X-100X, 100X-200X or 200X-400X)",
            "op": "a magnification and its successor (40X-100X, 100X-200X or 200X-400X)"}
    return (f"{data_dir}: no sample has the magnifications pair strategy {strategy} needs "
            f"({need.get(strategy, 'two magnifications')} with the same sequence number); "
            f"{found}.")


class PairData:
    """Decoded pixels of the images of every sample (uint8, ``input_size`` squared) and which
    magnifications each sample has.

    With ``on_bad_image="skip"`` an image that fails to decode is left out: its sample loses
    that magnification, and the sample is dropped when it can no longer form a pair
    (``dropped``: ``(sample_key, path, reason)`` of every failed image); ``samples`` holds the
    kept samples. With ``complete_only`` a sample needs all four magnifications.
    """

    def __init__(self, samples: pd.DataFrame, size: int, cache_dir: str | Path | None,
                 progress: bool = True, on_bad_image: str = "error",
                 complete_only: bool = True, strategy: str = "ordered") -> None:
        present = present_magnifications(samples)
        paths = [p for row in samples[PATH_COLUMNS].itertuples(index=False) for p in row
                 if p is not None]
        try:
            pixels, bad = load_images_with_report(paths, size, cache_dir=cache_dir,
                                                  progress=progress, on_bad_image=on_bad_image)
        except DataError as err:
            raise with_skip_hint(err) from None
        self.pixels = np.asarray(pixels)
        rows = np.full(present.shape, -1, dtype=np.int64)
        rows[present] = np.arange(len(paths))  # row-major: the order of ``paths``
        reasons = dict(bad)
        self.dropped: list[tuple[str, str, str]] = []
        failed: dict[int, list[str]] = {}
        for i, key in enumerate(samples["sample_key"]):
            for j in np.flatnonzero(present[i]):
                path = paths[rows[i, j]]
                if path in reasons:
                    self.dropped.append((str(key), path, reasons[path]))
                    failed.setdefault(i, []).append(path)
                    rows[i, j] = -1
        usable = rows >= 0
        keep = usable.all(axis=1) if complete_only else _sampler(strategy).eligible(usable)
        for i, paths_failed in failed.items():
            first = paths_failed[0]
            log.warning("sample %s %s: %s failed to decode (%s)", samples["sample_key"].iloc[i],
                        "kept with its other magnifications" if keep[i]
                        else "dropped from pairs", first, reasons[first])
        self.complete_only = complete_only
        self.rows = rows[keep]                # sample -> row of ``pixels`` per magnification
        self.samples = samples[keep].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def present(self) -> np.ndarray:
        """bool ``[n, 4]``: the magnifications each kept sample has."""
        return self.rows >= 0

    def row_sampler(self, sampler: PairSampler | SameImagePair) -> RowSampler:
        """The epoch sampler of this source: pairs among each sample's magnifications."""
        if self.complete_only:
            return RowSampler(sampler)
        return PresentMagnifications(sampler, self.present)

    def views(self, index: np.ndarray, mag1: np.ndarray, mag2: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[N, 3, S, S]`` views of samples ``index`` at magnifications ``mag1`` and
        ``mag2``: indices into :data:`MAGNIFICATIONS` ``[N]``, or view specs ``[N, 3]``
        whose column 0 is the relative magnification (:data:`MAGNIFICATION_SCALES`)."""
        rows = self.rows[np.asarray(index)]
        m1, m2 = _mag_index(mag1), _mag_index(mag2)
        pick = np.arange(len(rows))
        return (torch.from_numpy(self.pixels[rows[pick, m1]]),
                torch.from_numpy(self.pixels[rows[pick, m2]]))


def _mag_index(mag: np.ndarray) -> np.ndarray:
    mag = np.asarray(mag)
    if mag.ndim == 2:  # (scale, u, v) specs of a mixed run
        return np.searchsorted(MAGNIFICATION_SCALES, mag[:, 0])
    return mag.astype(np.int64)
