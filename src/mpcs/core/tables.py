"""Safe text cells for every CSV file mpcs writes, and reading them back.

Every CSV the project writes goes through :func:`csv_text` (or :func:`safe_frame` /
:func:`safe_rows`), and every one it reads back through :func:`read_csv`.

**Formula injection** (OWASP "CSV Injection"). A spreadsheet program treats a cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula, so an image
named ``=cmd|' /C calc'!A0.png`` would be a live formula in ``predictions.csv``. Such a
text cell is written with an apostrophe in front (``'=cmd|' /C calc'!A0.png``), the prefix
OWASP recommends: the spreadsheet shows it as text. A text cell that already starts with
apostrophes followed by one of those characters gets one more, so the rule can be undone
exactly: :func:`restore` removes one leading apostrophe from a cell that has one followed
(after any further apostrophes) by one of those characters, and :func:`read_csv` does that
for every text column. Only ``str`` cells are changed: numbers, negative ones included, stay
numbers. A text cell that looks like a negative number (``"-1"`` in a text column) is
prefixed like any other, and read back by :func:`read_csv` as the text ``"-1"``.

**Bytes that are not UTF-8.** A file name that is not valid UTF-8 reaches Python (from
``os.listdir``) with each bad byte as a lone surrogate (``surrogateescape``) and cannot be
written to a UTF-8 file. Each such byte is written as the four characters ``\\xNN`` (the
name ``b"caf\\xe9.png"`` becomes ``caf\\xe9.png``) and one warning per file written says how
many cells were changed. This cannot be undone from the CSV (a name may hold a real
backslash); the DataFrames returned by ``mpcs.api`` keep the exact names.

Example:
    >>> neutralise("=1+1"), neutralise("-3"), neutralise(-3), neutralise("a.png")
    ("'=1+1", "'-3", -3, 'a.png')
    >>> restore("'=1+1"), restore("'quoted")
    ('=1+1', "'quoted")
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

__all__ = ["FORMULA_START", "csv_text", "escape_undecodable", "neutralise", "read_csv",
           "restore", "safe_frame", "safe_rows"]

log = logging.getLogger(__name__)

#: First characters that make a spreadsheet cell a formula (OWASP).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if 0xDC80 <= code <= 0xDCFF:  # a byte that os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape_undecodable(text: str) -> str:
    """``text`` with each undecodable byte (lone surrogate) written as ``\\xNN``."""
    return _SURROGATE.sub(_escape_char, text)


def _escape_cell(value: Any) -> Any:
    return escape_undecodable(value) if isinstance(value, str) else value


def _needs_prefix(text: str) -> bool:
    return text.startswith(FORMULA_START) or (
        text.startswith("'") and text.lstrip("'").startswith(FORMULA_START))


def neutralise(value: Any) -> Any:
    """A text cell made safe (apostrophe before a formula start, undecodable bytes as
    ``\\xNN``); anything that is not a ``str`` is returned as is."""
    if not isinstance(value, str):
        return value
    value = escape_undecodable(value)
    return "'" + value if _needs_prefix(value) else value


def restore(value: Any) -> Any:
    """The cell :func:`neutralise` was given (apostrophe prefix removed); not ``\\xNN``."""
    if isinstance(value, str) and value.startswith("'") and _needs_prefix(value[1:]):
        return value[1:]
    return value


def _is_text(column: pd.Series) -> bool:
    return column.dtype == object or pd.api.types.is_string_dtype(column.dtype)


def _count_undecodable(values: Iterable[Any]) -> int:
    return sum(1 for v in values if isinstance(v, str) and _SURROGATE.search(v))


def _warn_undecodable(count: int, where: str | os.PathLike[str] | None) -> None:
    if count:
        log.warning("%s: %d cell(s) hold file-name bytes that are not UTF-8; written with "
                    "each such byte as \\xNN", where or "CSV", count)


def safe_frame(df: pd.DataFrame, where: str | os.PathLike[str] | None = None,
               formulas: bool = True) -> pd.DataFrame:
    """A copy of ``df`` whose text cells went through :func:`neutralise` (other columns
    untouched); ``where`` names the file in the one warning about undecodable bytes. With
    ``formulas=False`` (formats that no spreadsheet reads as formulas, e.g. Parquet) only
    the undecodable bytes are escaped."""
    out = df.copy()
    count = 0
    fix = neutralise if formulas else _escape_cell
    for name in out.columns:
        column = out[name]
        if _is_text(column):
            count += _count_undecodable(column)
            out[name] = column.map(fix)
    _warn_undecodable(count, where)
    return out


def csv_text(df: pd.DataFrame, where: str | os.PathLike[str] | None = None) -> str:
    """``df`` as CSV text without the index, text cells made safe (see :func:`safe_frame`)."""
    return safe_frame(df, where).to_csv(index=False)


def safe_rows(rows: Iterable[Sequence[Any]], where: str | os.PathLike[str] | None = None
              ) -> list[list[Any]]:
    """Rows for ``csv.writer`` with every cell through :func:`neutralise`."""
    rows = [list(r) for r in rows]
    _warn_undecodable(sum(_count_undecodable(r) for r in rows), where)
    return [[neutralise(v) for v in r] for r in rows]


def read_csv(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` of a CSV mpcs wrote, with :func:`restore` on every text column."""
    df = pd.read_csv(path, **kwargs)
    for name in df.columns:
        if _is_text(df[name]):
            df[name] = df[name].map(restore)
    return df
