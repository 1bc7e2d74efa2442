"""When an observation was made: ``obs_time`` of a time-series file or table as UTC timestamps.

ISO 8601 dates or date-times (UTC where no offset is given; offsets converted), or Unix times in
seconds or milliseconds (JRC's ``date_part``, Earth Engine exports). Errors name the file, the line
(1 = header) and the column, as every error of :mod:`.reader`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cbm_tasks.errors import BadInputError

__all__ = ["UTC_TIME", "SeriesFileError", "unix_times", "utc_times"]

UTC_TIME = pa.timestamp("us", tz="UTC")
_MIN_UNIX_SECONDS, _MAX_UNIX_SECONDS = 1_388_534_400, 4_102_444_800  # 2014-01-01 (Sentinel-1A) .. 2100-01-01


class SeriesFileError(BadInputError):
    """A time-series file is missing, malformed or has values outside their range."""


def utc_times(path: Path, table: pa.Table) -> pa.ChunkedArray:
    """Parse ``obs_time`` (ISO 8601 date or date-time, UTC when no offset is given) to UTC timestamps.

    Numbers are Unix times, as JRC's API gives them (``date_part``) and Earth Engine exports do: in
    seconds, or in milliseconds where they are too large for seconds of this century.
    """
    column = table.column("obs_time")
    if pa.types.is_timestamp(column.type):
        return column.cast(UTC_TIME) if column.type.tz else pc.assume_timezone(column, "UTC").cast(UTC_TIME)
    numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    if not numeric and pa.types.is_string(column.type):  # a CSV's column: read as text
        numeric = bool(pc.all(pc.match_substring_regex(column, r"^\d+(\.\d*)?$")).as_py() or False)
    if numeric:
        return unix_times(path, column)
    try:  # every value with a zone offset (Z, +02:00): converted to UTC
        return pc.cast(column.cast(pa.string()), UTC_TIME)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pc.replace_substring_regex(column.cast(pa.string()), r"(Z|[+-]00:?00)$", "")
    try:
        return pc.assume_timezone(pc.cast(text, pa.timestamp("us")), "UTC").cast(UTC_TIME)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # one value at a time (slow, rare): offsets mixed with times without one, nanoseconds
    out: list[datetime | None] = []
    for line, value in enumerate(column.cast(pa.string()).to_pylist(), start=2):
        if value is None:  # named by the check for empty values
            out.append(None)
            continue
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise SeriesFileError(f"time-series file {path}: line {line}, column 'obs_time': cannot read "
                                  f"{value!r} as an ISO 8601 UTC time") from None
        out.append(when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC))
    return pa.chunked_array([pa.array(out, UTC_TIME)])


def unix_times(path: Path, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Unix times in seconds, or in milliseconds where the values are too large for seconds (see utc_times)."""
    empty = column.is_null().to_numpy(zero_copy_only=False)  # named by the check for empty values
    seconds = np.where(empty, _MIN_UNIX_SECONDS, pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
    finite = seconds[np.isfinite(seconds) & ~empty]
    if len(finite) and float(np.median(finite)) > _MAX_UNIX_SECONDS:
        seconds = np.where(empty, seconds, seconds / 1000.0)
    bad = ~(np.isfinite(seconds) & (seconds >= _MIN_UNIX_SECONDS) & (seconds <= _MAX_UNIX_SECONDS))
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise SeriesFileError(f"time-series file {path}: line {line}, column 'obs_time': {column[line - 2].as_py()!r} "
                              "is no Unix time of 2014-2100 (seconds or milliseconds) nor an ISO 8601 time")
    return pa.chunked_array([pa.array(np.rint(seconds * 1e6).astype(np.int64), UTC_TIME, mask=empty)])
