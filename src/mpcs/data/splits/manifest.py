"""What splits are computed from and checked against: the manifest's columns, image paths
relative to the data set's root, the data set's fingerprint, and label fractions."""

from __future__ import annotations

import hashlib
import math
import os

import pandas as pd

from mpcs.core.errors import ConfigError, DataError

REQUIRED_COLUMNS = ("path", "patient_id", "label", "subtype", "magnification")


def relative_paths(manifest: pd.DataFrame) -> pd.Series:
    """Image paths relative to ``manifest.attrs["root"]`` (the ``breast`` folder), with ``/``.

    Without a root in ``attrs`` the paths are used as given.

    Example:
        >>> df = pd.DataFrame({"path": ["/d/breast/benign/x.png"]})
        >>> df.attrs["root"] = "/d/breast"
        >>> relative_paths(df).tolist()
        ['benign/x.png']
    """
    root = manifest.attrs.get("root")
    paths = manifest["path"].astype(str)
    if root is None:
        return paths.str.replace(os.sep, "/", regex=False)
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    return pd.Series(rel, index=manifest.index, name="relpath", dtype=object)


def dataset_fingerprint(manifest: pd.DataFrame) -> str:
    """sha1 over the sorted (relative path, patient id, label) lines of a manifest.

    File contents are not read: the fingerprint identifies which images the splits refer
    to, so re-encoding or moving the whole data set elsewhere keeps it.

    Example:
        >>> df = pd.DataFrame({"path": ["a.png"], "patient_id": ["p"], "label": ["benign"]})
        >>> len(dataset_fingerprint(df))
        40
    """
    rel = relative_paths(manifest)
    lines = sorted(
        f"{path}\t{patient}\t{label}\n"
        for path, patient, label in zip(rel, manifest["patient_id"], manifest["label"],
                                        strict=True)
    )
    digest = hashlib.sha1()
    for line in lines:
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {', '.join(missing)} needed for splits")
    if manifest.empty:
        raise DataError("manifest has no images: nothing to split")
    labels = manifest.groupby("patient_id")["label"].nunique()
    mixed = labels[labels > 1]
    if not mixed.empty:
        raise DataError(f"patient {mixed.index[0]} has images of more than one class")


def check_fraction(fraction: float) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"label fraction must be a number in (0, 1], got {fraction!r}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction!r}")
    return value


def take_fraction(fraction: float, n: int) -> int:
    """``ceil(fraction * n)``, robust to float noise (0.6 * 5 is 3.0000000000000004)."""
    return min(n, math.ceil(round(fraction * n, 9)))


def fraction_key(fraction: float) -> str:
    return f"{fraction:g}"
