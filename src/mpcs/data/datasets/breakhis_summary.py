"""What a BreakHis folder holds: the summary ``mpcs inspect`` prints (images per class,
tumour type and magnification; patients; complete samples), and the census ``mpcs download``
checks against the published counts (:data:`BREAKHIS_SOURCE`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mpcs.core.vocab import CLASSES, MAGNIFICATIONS
from mpcs.data.cache import quiet_pil_warnings
from mpcs.data.datasets.breakhis import complete_samples, scan_breakhis
from mpcs.data.datasets.breakhis_names import SUBTYPE_LABEL, SUBTYPES
from mpcs.data.download.source import Census, DatasetSource, holds


def _counts(series: pd.Series, keys: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Value counts of ``series`` for every key in ``keys`` (zero when absent)."""
    counts = series.value_counts()
    return {key: int(counts.get(key, 0)) for key in keys}


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Summarise a manifest from :func:`scan_breakhis` as a plain dictionary.

    Keys: ``root``, ``images``, ``images_per_class``, ``images_per_subtype``,
    ``images_per_magnification``, ``class_by_magnification`` (``{class: {mag: n}}``),
    ``patients``, ``patients_per_class``, ``patients_per_subtype``, ``complete_samples``
    (sample keys present at all four magnifications), ``incomplete_samples`` (the other
    sample keys), ``skipped`` (number of skipped files).
    """
    complete = complete_samples(df)
    sample_keys = int(df["sample_key"].nunique()) if not df.empty else 0
    patients = df.drop_duplicates(["patient_id", "label", "subtype"])
    return {
        "root": df.attrs.get("root"),
        "images": len(df),
        "images_per_class": _counts(df["label"], CLASSES),
        "images_per_subtype": _counts(df["subtype"], list(SUBTYPES)),
        "images_per_magnification": _counts(df["magnification"], MAGNIFICATIONS),
        "class_by_magnification": {
            label: _counts(df.loc[df["label"] == label, "magnification"], MAGNIFICATIONS)
            for label in CLASSES
        },
        "patients": int(df["patient_id"].nunique()),
        "patients_per_class": {
            label: int(df.loc[df["label"] == label, "patient_id"].nunique()) for label in CLASSES
        },
        "patients_per_subtype": _counts(patients["subtype"], list(SUBTYPES)),
        "complete_samples": len(complete),
        "incomplete_samples": sample_keys - len(complete),
        "skipped": len(df.attrs.get("skipped", [])),
    }


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Format rows as aligned columns; the first ``left`` columns are left-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(header), *(line(row) for row in rows)]


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize` output as the text printed by ``mpcs inspect``."""
    root = summary.get("root") or "<unknown folder>"
    lines = [f"BreakHis at {root}: {summary['images']} images, {summary['patients']} patients"]
    per_class = summary["patients_per_class"]
    lines.append("Patients: " + ", ".join(f"{label} {per_class[label]}" for label in CLASSES))
    lines.append(
        f"Complete 4-magnification samples: {summary['complete_samples']} "
        f"(incomplete samples: {summary['incomplete_samples']})"
    )
    if summary.get("skipped"):
        lines.append(f"Skipped unusable files: {summary['skipped']}")
    lines += ["", "Images by class and magnification:"]
    by_mag = summary["class_by_magnification"]
    header = ["", *MAGNIFICATIONS, "total"]
    rows = [
        [label, *(str(by_mag[label][m]) for m in MAGNIFICATIONS),
         str(summary["images_per_class"][label])]
        for label in CLASSES
    ]
    per_mag = summary["images_per_magnification"]
    rows.append(["total", *(str(per_mag[m]) for m in MAGNIFICATIONS), str(summary["images"])])
    lines += _table(header, rows)
    lines += ["", "Images by tumour type:"]
    header = ["code", "tumour type", "class", "patients", "images"]
    rows = [
        [code, folder, SUBTYPE_LABEL[code], str(summary["patients_per_subtype"][code]),
         str(summary["images_per_subtype"][code])]
        for code, folder in SUBTYPES.items()
    ]
    lines += _table(header, rows, left=3)
    return "\n".join(lines)


# --------------------------------------------------------------------------- download


def count_breakhis(root: Path) -> Census:
    """Images, patients (slide folders: the official archive's 82, of 81 distinct ids), and
    images per class and per class x magnification of a BreakHis tree."""
    with quiet_pil_warnings():
        frame = scan_breakhis(root, on_bad_image="skip")
    counts = {"images": len(frame),
              "patients": int(len(frame.drop_duplicates(["patient_id", "subtype"])))}
    for label in CLASSES:
        part = frame[frame["label"] == label]
        counts[label] = len(part)
        for mag in MAGNIFICATIONS:
            counts[f"{label} {mag}"] = int((part["magnification"] == mag).sum())
    return Census(counts, [(str(p), str(r)) for p, r in frame.attrs.get("skipped", [])])


def _breakhis_expected() -> dict[str, int]:
    # The UFPR page's table (https://web.inf.ufpr.br/vri/databases/breast-cancer-
    # histopathological-database-breakhis/). Its 40X benign cell reads 652, but its own
    # totals (1,995 images at 40X with 1,370 malignant; 2,480 benign in all) need 625.
    per_mag = {"benign": (625, 644, 623, 588), "malignant": (1370, 1437, 1390, 1232)}
    expected = {"images": 7909, "patients": 82, "benign": 2480, "malignant": 5429}
    for label, values in per_mag.items():
        expected.update({f"{label} {m}": v for m, v in zip(MAGNIFICATIONS, values, strict=True)})
    return expected


BREAKHIS_SOURCE = DatasetSource(
    name="breakhis",
    title="BreakHis v1 (Breast Cancer Histopathological Image Classification), UFPR / "
          "P&D Laboratory, Parana, Brazil",
    url="http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz",
    page="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-"
         "database-breakhis/",
    archive="BreaKHis_v1.tar.gz",
    sha256=None,
    expected=_breakhis_expected(),
    citation="F. A. Spanhol, L. S. Oliveira, C. Petitjean, L. Heutte. A Dataset for Breast "
             "Cancer Histopathological Image Classification. IEEE Transactions on "
             "Biomedical Engineering 63(7):1455-1462, 2016. doi:10.1109/TBME.2015.2496264",
    terms="made available by UFPR for research; use it under the terms on its page and "
          "cite the paper below",
    target="BreaKHis_v1",
    is_root=holds("histology_slides"),
    count=count_breakhis,
)
