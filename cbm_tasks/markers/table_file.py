"""The long table files of the time series: CSV, gzipped CSV or Parquet, read into Arrow with errors by line.

:func:`read_table` is the file half of :mod:`cbm_tasks.markers.reader` (which gives the rows their
meaning), and reads the crop codes of ``cbm markers run --crops`` the same way: a CSV is
comma-separated, or, when its header has no comma, separated by semicolons or tabs as spreadsheets
save it; a leading BOM is skipped; the known columns get their types (``COLUMN_TYPES``); a value that
does not convert is an error naming the file, the line (1 = header) and the column.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cbm_tasks.markers.obs_time import UTC_TIME, SeriesFileError, utc_times

__all__ = ["COLUMN_TYPES", "classes_file", "read_table", "require_columns"]

log = logging.getLogger(__name__)

COLUMN_TYPES = {"parcel_id": pa.string(), "obs_time": pa.string(), "source": pa.string(), "band": pa.string(),
          "mean": pa.float64(), "clear_fraction": pa.float64(), "orbit": pa.float64(),
          "product_id": pa.float64(), "count": pa.float64(), "class": pa.float64(), "std": pa.float64()}


def classes_file(path: Path) -> Path:
    """Return the class-count companion of *path* (``x.csv.gz`` -> ``x_classes.csv.gz``)."""
    name = path.name
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if name.lower().endswith(suffix):
            return path.with_name(f"{name[: -len(suffix)]}_classes{name[-len(suffix):]}")
    return path.with_name(f"{path.stem}_classes{path.suffix}")


def _first_bad_line(path: Path, column: str, target: pa.DataType, delimiter: str) -> tuple[int, str]:
    """Find the first line whose *column* cannot be converted to *target* (slow path, errors only)."""
    table = _read_csv(path, {column: pa.string()}, strings_only=True, delimiter=delimiter)
    values = table.column(column).to_pylist()
    for line, value in enumerate(values, start=2):
        if value is None or value == "":
            continue
        try:
            pc.cast(pa.array([value]), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return line, value
    return -1, ""


def _delimiter(header: str) -> str:
    """The header's field separator: ``,`` (the format), else ``;`` or a tab when the header has no comma.

    Spreadsheets in locales with a decimal comma save "CSV" with semicolons; such a file is read as it
    is rather than failing on its first line (a decimal comma in a value is still an error, named).
    """
    if "," in header:
        return ","
    return next((candidate for candidate in (";", "\t") if candidate in header), ",")


def _read_csv(path: Path, types: dict[str, pa.DataType], *, strings_only: bool = False,
              delimiter: str = ",") -> pa.Table:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        return pa_csv.read_csv(
            stream,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, include_columns=list(types) if strings_only else None,
                strings_can_be_null=True, quoted_strings_can_be_null=True,
                timestamp_parsers=[pa_csv.ISO8601, "%Y-%m-%d %H:%M:%S.%fZ"]),
        )


def require_columns(path: Path, table: pa.Table, required: tuple[str, ...], *, hint: str = "") -> None:
    """Raise :class:`SeriesFileError` naming the *required* columns *table* lacks (and *hint*)."""
    missing = [column for column in required if column not in table.column_names]
    if missing:
        raise SeriesFileError(f"time-series file {path}: line 1: missing column(s) {', '.join(missing)}; "
                              f"required: {', '.join(required)}; found: {', '.join(table.column_names)}{hint}")


def read_table(path: Path, required: tuple[str, ...]) -> pa.Table:
    """Read a CSV / gzipped CSV / Parquet file into an Arrow table with the known columns typed.

    Raises:
        SeriesFileError: missing file, unknown extension, unreadable content, a missing required
            column, or a value that does not convert (named by line and column).
    """
    if not path.is_file():
        raise SeriesFileError(f"time-series file {path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            table = pq.read_table(path)
        elif name.endswith((".csv", ".csv.gz")):
            with (gzip.open if name.endswith(".gz") else open)(path, "rb") as stream:
                first = stream.readline().decode("utf-8-sig", "replace").strip()  # -sig: a spreadsheet's BOM
            delimiter = _delimiter(first)
            if delimiter != ",":
                log.info("time-series file %s: fields separated by %r", path, delimiter)
            header = [column.strip().strip('"') for column in first.split(delimiter)]
            types = {column: COLUMN_TYPES[column] for column in header if column in COLUMN_TYPES}
            try:
                table = _read_csv(path, types, delimiter=delimiter)
            except pa.ArrowInvalid as err:
                match = re.search(r"CSV column #(\d+)", str(err))
                if match is None or int(match.group(1)) >= len(header):
                    raise
                column = header[int(match.group(1))]
                line, value = _first_bad_line(path, column, types.get(column, pa.string()), delimiter)
                hint = " (a decimal comma: the format wants a point)" if re.fullmatch(r"-?\d+,\d+", value) else ""
                raise SeriesFileError(f"time-series file {path}: line {line}, column {column!r}: cannot read "
                                      f"{value!r} as {types.get(column)}{hint}") from err
        else:
            raise SeriesFileError(f"time-series file {path}: extension must be .csv, .csv.gz or .parquet")
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError) as err:
        raise SeriesFileError(f"time-series file {path}: cannot read: {err}") from err
    require_columns(path, table, required)
    if "obs_time" in table.column_names and table.column("obs_time").type != UTC_TIME:
        table = table.set_column(table.column_names.index("obs_time"), "obs_time", utc_times(path, table))
    for column in table.column_names:
        want = COLUMN_TYPES.get(column)
        if want is not None and column != "obs_time" and table.column(column).type != want:
            try:
                table = table.set_column(table.column_names.index(column), column, pc.cast(table.column(column),
                                                                                             want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise SeriesFileError(f"time-series file {path}: column {column!r} of type "
                                      f"{table.column(column).type} cannot be read as {want}: {err}") from err
    return table
