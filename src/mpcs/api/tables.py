"""The tables ``embed`` and ``predict`` write: checked suffixes, the file-name columns, and a
writer that streams rows to the file batch by batch.

:class:`TableWriter` writes into a temporary file beside the output and renames it over the
output when every row is written (a failure leaves no partial table). CSV text cells go
through :mod:`mpcs.core.tables` (an apostrophe before a formula start; bytes of a file name
that are not UTF-8 as ``\\xNN``, with one warning per file saying how many cells); Parquet
(needs pyarrow) is written one row group per batch.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import pandas as pd

from mpcs.core.errors import ConfigError
from mpcs.core.io import atomic_file, atomic_path
from mpcs.core.tables import escape_undecodable, safe_frame
from mpcs.data.datasets import label_from_name
from mpcs.data.datasets.breakhis_names import BREAKHIS_FIELDS, breakhis_fields

__all__ = ["TableWriter", "check_suffix", "meta_frame", "skipped_note"]

log = logging.getLogger(__name__)


def check_suffix(out: Path, allowed: Sequence[str]) -> str:
    """The lower-case suffix of ``out``.

    Raises:
        ConfigError: a suffix not in ``allowed``, or ``.parquet`` without pyarrow.
    """
    suffix = out.suffix.lower()
    if suffix not in allowed:
        raise ConfigError(f"{out}: output must end in {' or '.join(allowed)}")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"{out}: writing .parquet needs pyarrow (pip install pyarrow); "
                          f"or write a .csv instead ({out.with_suffix('.csv')})")
    return suffix


def skipped_note(skipped: list[tuple[str, str]]) -> None:
    """One warning counting the images left out with ``skip_bad``."""
    if skipped:
        log.warning("%d unreadable image(s) left out", len(skipped))


def meta_frame(files: Sequence[Path]) -> pd.DataFrame:
    """``path`` and the BreakHis fields of each file (empty where the name does not parse);
    the ``label`` also of files named as in another registered data set (UCSB BCC, BACH:
    :func:`mpcs.data.datasets.label_from_name`)."""
    rows = [{"path": str(f), **breakhis_fields(f)} for f in files]
    for row, f in zip(rows, files, strict=True):
        if row["label"] is None:
            row["label"] = label_from_name(f)
    df = pd.DataFrame(rows, columns=["path", *BREAKHIS_FIELDS])
    df["sequence"] = df["sequence"].astype("Int64")
    return df


class TableWriter:
    """Rows written to ``out`` (``.csv`` or ``.parquet``) as they come; use as a context
    manager. The first :meth:`write` fixes the columns (and, for Parquet, the types)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.parquet = self.out.suffix.lower() == ".parquet"
        self.rows = 0
        self.started = False
        self._undecodable = 0
        self._stack = ExitStack()
        self._file: IO[str] | None = None
        self._tmp: Path | None = None
        self._parquet_writer: Any = None

    def __enter__(self) -> TableWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet:
            self._tmp = self._stack.enter_context(atomic_path(self.out, suffix=".tmp.parquet"))
            self._stack.callback(self._close_parquet)
        else:
            self._file = self._stack.enter_context(atomic_file(self.out, "w"))
        return self

    def _escaped(self, df: pd.DataFrame) -> pd.DataFrame:
        """Text cells with undecodable bytes as ``\\xNN``, counted for the one warning."""
        out = df.copy()
        for name in out.columns:
            column = out[name]
            if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
                values = column.tolist()
                fixed = [escape_undecodable(v) if isinstance(v, str) else v for v in values]
                self._undecodable += sum(isinstance(v, str) and v != f
                                         for v, f in zip(values, fixed, strict=True))
                out[name] = pd.Series(fixed, index=column.index, dtype=column.dtype)
        return out

    def write(self, df: pd.DataFrame) -> None:
        """Append the rows of ``df`` (written at once, also when it has no rows)."""
        df = self._escaped(df)
        if self.parquet:
            self._write_parquet(df)
        else:
            assert self._file is not None, "use TableWriter as a context manager"
            safe_frame(df, self.out).to_csv(self._file, index=False, header=not self.started)
        self.started = True
        self.rows += len(df)

    def _write_parquet(self, df: pd.DataFrame) -> None:
        import pyarrow as pa  # optional dependency (checked by check_suffix)
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(safe_frame(df, self.out, formulas=False),
                                     preserve_index=False)
        if self._parquet_writer is None:
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                for f in table.schema])
            self._parquet_writer = pq.ParquetWriter(str(self._tmp), schema)
        self._parquet_writer.write_table(table.cast(self._parquet_writer.schema))

    def _close_parquet(self) -> None:
        if self._parquet_writer is not None:
            self._parquet_writer.close()

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)
        if exc[0] is None and self._undecodable:
            log.warning("%s: %d cell(s) hold file-name bytes that are not UTF-8; written with "
                        "each such byte as \\xNN", self.out, self._undecodable)
