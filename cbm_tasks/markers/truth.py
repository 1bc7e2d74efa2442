"""Ground truth of dated events (field checks, surveys, camera-verified plots) for scoring a marker.

One CSV file (``.csv`` or ``.csv.gz``) with a header and one row per true event:

* ``parcel_id`` (or JRC's ``ID``, ``PSEUDO_ID``, ``FIELD_ID``, or ``plot_id`` of field surveys and camera
  plots): the parcel id as in the time series (an integer id a spreadsheet wrote as ``123.0`` is read as ``123``);
* ``date`` (or ``event_date``, ``activity_date``, ``event_start_date``): ``YYYY-MM-DD`` (a time after it is
  ignored) or ``DD/MM/YYYY`` (JRC's SALMS ``FOIinfo.csv``);
* optional ``event`` (or ``marker``): the marker the row is about (``mowing``, ``harvest``, ...); rows of
  other markers are skipped. JRC's numeric ``Event_type`` codes are not names and are not read.

A row with an empty date says the parcel was checked and had no such event (a surveyed negative: every
detection on it is false, and the score reports how many negatives stayed without a detection). Every
parcel the file names is scored; a parcel with dated rows and an empty-date row contradicts itself and is an
error. A folder in the layout of the Slovak development set (``surveyed.csv`` + ``truth.csv``, see
:func:`read_survey_truth`) is read for the mowing marker; :func:`read_salms_truth` reads JRC's SALMS example.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from cbm_tasks.errors import BadInputError

__all__ = ["PARCEL_COLUMNS", "GroundTruth", "csv_rows", "find_column", "parcel_id_text", "read_salms_truth",
           "read_survey_truth", "read_truth"]

PARCEL_COLUMNS = ("parcel_id", "id", "pseudo_id", "field_id", "plot_id")
_DATE_COLUMNS = ("date", "event_date", "activity_date", "event_start_date")
_EVENT_COLUMNS = ("event", "marker")


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """True events of one marker.

    Attributes:
        source: the file or folder read (named in messages).
        marker: the marker the events are of.
        events: parcel id -> true event dates, sorted (parcels without an event are absent).
        parcels: every parcel scored, sorted.
        negatives: the parcels checked and found without the event.
    """

    source: str
    marker: str
    events: dict[str, list[date]]
    parcels: tuple[str, ...]
    negatives: frozenset[str]

    def of_year(self, year: int) -> GroundTruth:
        """The truth of season *year* (a parcel set's): dates of other years left out.

        The parcels known only by such dates go too, and the source says how many dates were left out.
        Checked negatives (no date) are taken as of *year*.

        Raises:
            BadInputError: nothing of *year* is left.
        """
        events = {parcel: kept for parcel, dates in self.events.items()
                  if (kept := [when for when in dates if when.year == year])}
        left_out = sum(map(len, self.events.values())) - sum(map(len, events.values()))
        if not left_out:
            return self
        if not events and not self.negatives:
            raise BadInputError(f"ground truth {self.source}: no {self.marker} date of {year} (the parcel set's year)")
        return GroundTruth(f"{self.source} ({year} only: {left_out} date{'s' if left_out > 1 else ''} of other years "
                           "left out)", self.marker, events, tuple(sorted(set(events) | self.negatives)),
                           self.negatives)


def find_column(header: list[str], names: tuple[str, ...]) -> str | None:
    """The first column of *header* named (case-insensitively) as one of *names*, in their order."""
    by_lower = {name.strip().lower(): name for name in header}
    return next((by_lower[name] for name in names if name in by_lower), None)


def parcel_id_text(text: str) -> str:
    """The id as the series has it: spreadsheets write integer ids as ``123.0``."""
    value = text.strip()
    return value[:-2] if value.endswith(".0") and value[:-2].isdigit() else value


def _parse_date(text: str, where: str) -> date:
    value = text.strip()
    try:
        if "/" in value:
            return datetime.strptime(value, "%d/%m/%Y").date()
        return date.fromisoformat(value[:10])
    except ValueError:
        raise BadInputError(f"{where}: cannot read date {text!r} (YYYY-MM-DD or DD/MM/YYYY)") from None


@contextmanager
def csv_rows(path: Path, what: str) -> Iterator[csv.DictReader[str]]:
    """Open a CSV (``.csv`` or ``.csv.gz``, a byte-order mark tolerated) for :class:`csv.DictReader`.

    Raises:
        BadInputError: the file cannot be opened or read ("*what* PATH: cannot read: ..."), raised where
            the reading fails (at the open or while the rows are read).
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as stream:
            yield csv.DictReader(stream)
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as err:
        raise BadInputError(f"{what} {path}: cannot read: {err}") from err


def _read_file(path: Path, marker: str) -> GroundTruth:
    events: dict[str, set[date]] = {}
    negatives: dict[str, int] = {}  # parcel -> line of its empty-date row
    with csv_rows(path, "ground truth") as rows:
        header = list(rows.fieldnames or [])
        parcel_col, date_col = find_column(header, PARCEL_COLUMNS), find_column(header, _DATE_COLUMNS)
        event_col = find_column(header, _EVENT_COLUMNS)
        if parcel_col is None or date_col is None:
            raise BadInputError(f"ground truth {path}: needs a parcel column ({', '.join(PARCEL_COLUMNS)}) and a "
                                f"date column ({', '.join(_DATE_COLUMNS)}); header: {header}")
        for line, row in enumerate(rows, start=2):
            if event_col is not None and (row.get(event_col) or marker).strip().lower() != marker:
                continue
            parcel = parcel_id_text(row.get(parcel_col) or "")
            if not parcel:
                raise BadInputError(f"ground truth {path}: line {line}: column {parcel_col!r} is empty")
            when = (row.get(date_col) or "").strip()
            if when:
                events.setdefault(parcel, set()).add(
                    _parse_date(when, f"ground truth {path}: line {line}: column {date_col!r}"))
            else:
                negatives.setdefault(parcel, line)
    both = sorted(set(events) & set(negatives))
    if both:
        raise BadInputError(f"ground truth {path}: line {negatives[both[0]]}: parcel {both[0]!r} has no {marker} "
                            f"here but dated {marker} rows elsewhere ({len(both)} such parcels)")
    if not events and not negatives:
        raise BadInputError(f"ground truth {path}: no rows of marker {marker!r}")
    return GroundTruth(str(path), marker, {parcel: sorted(dates) for parcel, dates in events.items()},
                       tuple(sorted(set(events) | set(negatives))), frozenset(negatives))


def read_truth(path: Path, marker: str = "mowing") -> GroundTruth:
    """Read the ground truth of *marker* from a CSV file or a survey folder (module docstring).

    Raises:
        BadInputError: no such file, a missing column, an unreadable date (naming file, line and column), a
            parcel both with and without the event, no row of the marker, or a survey folder for another
            marker than mowing.
    """
    if path.is_dir():
        if marker != "mowing":
            raise BadInputError(f"ground truth {path}: a survey folder (surveyed.csv, truth.csv) holds mowing "
                                f"only, not {marker!r}")
        surveyed, events = read_survey_truth(path)
        return GroundTruth(str(path), marker, events, tuple(sorted(surveyed)),
                           frozenset(parcel for parcel, survey in surveyed.items() if survey == "not_mown"))
    if not path.is_file():
        raise BadInputError(f"ground truth {path}: no such file or folder")
    return _read_file(path, marker)


def read_survey_truth(folder: Path) -> tuple[dict[str, str], dict[str, list[date]]]:
    """Return (plot -> survey outcome, plot -> mowing dates) of a surveyed ground-truth folder.

    The layout of the Slovak development set (``../shared/data/grassland_sk_train``): ``surveyed.csv``
    (``parcel_id, survey``: ``mown`` or ``not_mown``; only these plots may be scored) and ``truth.csv``
    (``parcel_id, event, date``; rows of other events than ``mowing`` are left out).

    Raises:
        BadInputError: a file is missing, or a line lacks a column or has a date that does not parse.
    """
    surveyed: dict[str, str] = {}
    truth: dict[str, list[date]] = {}
    for name in ("surveyed.csv", "truth.csv"):
        path = folder / name
        if not path.is_file():
            raise BadInputError(f"ground truth {path}: no such file")
        with csv_rows(path, "ground truth") as rows:
            for line, row in enumerate(rows, start=2):
                try:
                    if name == "surveyed.csv":
                        surveyed[row["parcel_id"]] = row["survey"]
                    elif row.get("event", "mowing") == "mowing":
                        truth.setdefault(row["parcel_id"], []).append(date.fromisoformat(row["date"]))
                except (KeyError, TypeError, ValueError) as err:
                    raise BadInputError(f"ground truth {path}: line {line}: {err!r}") from err
    return surveyed, {plot: sorted(dates) for plot, dates in truth.items()}


def read_salms_truth(salms_dir: Path) -> dict[str, list[date]]:
    """Return the mowing dates per parcel id of JRC's SALMS example (``salms_dir/gtdir/FOIinfo.csv``).

    Raises:
        BadInputError: as :func:`read_truth`.
    """
    return read_truth(salms_dir / "gtdir" / "FOIinfo.csv").events
