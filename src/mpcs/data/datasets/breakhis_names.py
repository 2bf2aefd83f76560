"""BreakHis v1 file names: ``SOB_<B|M>_<T>-<year>-<slide>-<mag>-<seq>.png`` parsed into
patient, class, tumour type, magnification and sequence number (:func:`parse_filename`);
:func:`breakhis_fields` gives them as the columns of ``mpcs embed`` / ``predict`` tables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.images import is_image_file

#: Tumour-type code -> folder name in the official archive.
SUBTYPES: dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}


#: Tumour-type code -> class.
SUBTYPE_LABEL: dict[str, str] = {
    "A": "benign",
    "F": "benign",
    "PT": "benign",
    "TA": "benign",
    "DC": "malignant",
    "LC": "malignant",
    "MC": "malignant",
    "PC": "malignant",
}

CLASS_LETTER = {"benign": "B", "malignant": "M"}
LETTER_CLASS = {letter: label for label, letter in CLASS_LETTER.items()}
MAG_ORDER = {mag: index for index, mag in enumerate(MAGNIFICATIONS)}
_NAME_PATTERN = re.compile(
    r"SOB_(?P<letter>[^_]*)_(?P<code>[^-]*)-(?P<year>[^-]*)-(?P<slide>[^-]*)"
    r"-(?P<mag>[^-]*)-(?P<seq>[^.]*)(?P<ext>\.[^.]*)"
)
_YEAR = re.compile(r"[0-9]{2}")
_SLIDE = re.compile(r"[0-9A-Za-z]+")
_SEQUENCE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class BreakHisName:
    """The fields encoded in a BreakHis image file name."""

    label: str
    """``"benign"`` or ``"malignant"``."""
    subtype: str
    """Tumour-type code, a key of :data:`SUBTYPES` (``"A"``, ``"DC"``, ...)."""
    year: str
    """Two-digit year, e.g. ``"14"``."""
    slide: str
    """Slide id, digits possibly followed by letters, e.g. ``"22549AB"``."""
    patient_id: str
    """``"<year>-<slide>"``, e.g. ``"14-22549AB"``."""
    magnification: str
    """One of :data:`MAGNIFICATIONS`, e.g. ``"100X"``."""
    sequence: int
    """Image sequence number within the patient and magnification."""

    @property
    def class_letter(self) -> str:
        """``"B"`` for benign, ``"M"`` for malignant."""
        return CLASS_LETTER[self.label]

    @property
    def patient_folder(self) -> str:
        """Name of the slide folder holding this image, e.g. ``"SOB_B_A_14-22549AB"``."""
        return f"SOB_{self.class_letter}_{self.subtype}_{self.patient_id}"

    def filename(self, extension: str = ".png") -> str:
        """The canonical file name, e.g. ``"SOB_B_A-14-22549AB-100-001.png"``."""
        mag = self.magnification.removesuffix("X")
        return (
            f"SOB_{self.class_letter}_{self.subtype}-{self.patient_id}"
            f"-{mag}-{self.sequence:03d}{extension}"
        )


def parse_filename(name: str) -> BreakHisName:
    """Parse a BreakHis image file name such as ``"SOB_B_A-14-22549AB-100-001.png"``.

    A leading folder path is ignored. The extension may be any of the image extensions
    (case-insensitive); the class letter must agree with the tumour type.

    Raises:
        ValueError: with the reason, if the name does not follow the BreakHis pattern.
    """
    if not isinstance(name, str):
        raise TypeError(f"expected a file name string, got {type(name).__name__}")
    base = re.split(r"[\\/]", name)[-1]
    match = _NAME_PATTERN.fullmatch(base)
    if match is None:
        raise ValueError(
            f"{base!r} is not a BreakHis image name "
            "(expected SOB_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png, "
            "e.g. SOB_B_A-14-22549AB-100-001.png)"
        )
    return _name_from_parts(base, match.groupdict())


def _name_from_parts(base: str, parts: dict[str, str]) -> BreakHisName:
    """Validate the regex groups of a file name and build the :class:`BreakHisName`."""
    letter, code, mag = parts["letter"], parts["code"], parts["mag"]
    if letter not in LETTER_CLASS:
        raise ValueError(f"{base!r}: class letter {letter!r} is not B or M")
    if code not in SUBTYPES:
        known = ", ".join(SUBTYPES)
        raise ValueError(f"{base!r}: unknown tumour type {code!r} (expected one of {known})")
    label = LETTER_CLASS[letter]
    if SUBTYPE_LABEL[code] != label:
        raise ValueError(
            f"{base!r}: class letter {letter} ({label}) disagrees with tumour type {code} "
            f"({SUBTYPE_LABEL[code]})"
        )
    if not _YEAR.fullmatch(parts["year"]):
        raise ValueError(f"{base!r}: year {parts['year']!r} is not two digits")
    if not _SLIDE.fullmatch(parts["slide"]):
        raise ValueError(f"{base!r}: slide id {parts['slide']!r} is not letters and digits")
    if f"{mag}X" not in MAG_ORDER:
        raise ValueError(f"{base!r}: magnification {mag!r} is not one of 40, 100, 200, 400")
    if not _SEQUENCE.fullmatch(parts["seq"]):
        raise ValueError(f"{base!r}: sequence number {parts['seq']!r} is not digits")
    if not is_image_file(base):
        raise ValueError(f"{base!r}: extension {parts['ext']!r} is not an image extension")
    return BreakHisName(
        label=label,
        subtype=code,
        year=parts["year"],
        slide=parts["slide"],
        patient_id=f"{parts['year']}-{parts['slide']}",
        magnification=f"{mag}X",
        sequence=int(parts["seq"]),
    )


#: Columns filled from a BreakHis file name (empty when the name does not parse).
BREAKHIS_FIELDS: tuple[str, ...] = ("patient_id", "label", "subtype", "magnification",
                                    "sequence")


def breakhis_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:data:`BREAKHIS_FIELDS` of a file's name; all None when the name does not parse."""
    try:
        name = parse_filename(Path(path).name)
    except ValueError:
        return dict.fromkeys(BREAKHIS_FIELDS)
    return {"patient_id": name.patient_id, "label": name.label, "subtype": name.subtype,
            "magnification": name.magnification, "sequence": int(name.sequence)}
