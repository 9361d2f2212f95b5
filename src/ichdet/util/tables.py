"""CSV files that are safe to open in a spreadsheet, written atomically."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichdet.util.atomic import write_text

if TYPE_CHECKING:
    import pandas as pd

#: A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def safe_cell(value: Any) -> Any:
    """A string that a spreadsheet would run as a formula gets a leading ``'``; numbers (also
    negative ones, also as strings) and everything else pass through unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells are neutralised by :func:`safe_cell`."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = frame.copy()
    for column in out.columns:
        if is_object_dtype(out[column]) or is_string_dtype(out[column]):
            out[column] = out[column].map(safe_cell)
    return out


def write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """``frame`` as CSV (no index), formula-safe, atomically."""
    return write_text(path, safe_frame(frame).to_csv(index=False))


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Rows as CSV without pandas, formula-safe, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([safe_cell(v) for v in row] for row in rows)
    return write_text(path, buf.getvalue())
