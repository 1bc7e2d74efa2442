"""Why a parcel has, or lacks, a harvest: every end of a crop cycle and the tests it passed or failed.

A red light ``NO_EVENT`` on an arable scheme says that no harvest was found in its window; the
inspector asks which crop cycles the series shows and why none ended in a harvest (peak too low,
drop too small, outside the harvest period, or a cycle that never ended because NDVI stayed above
the stubble level). :func:`explain_harvest` answers with the harvest marker's own compiled cycle
tests (``crop_phases.cycle_ends``), so a cycle end is a ``harvest`` exactly when the marker
emitted one (tested on real plots, as ``mowing_explain`` is for the mowing marker).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers import crop_phases
from cbm_tasks.markers.crop_phases import cycle_ends
from cbm_tasks.markers.mowing_explain import failed_tests, write_verdicts
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import prepare
from cbm_tasks.markers.series import SeriesTable, day_to_date

__all__ = ["CYCLE_TESTS", "CycleVerdict", "HarvestExplanation", "explain_harvest"]

CYCLE_TESTS = {
    crop_phases.LOW_PEAK: "the cycle's peak is below harvest.min_peak_ndvi (no crop grown)",
    crop_phases.SMALL_DROP: "the fall from the peak is below harvest.min_drop",
    crop_phases.OUT_OF_PERIOD: "outside the harvest period (harvest.first_doy .. last_doy)",
}


@dataclass(frozen=True, slots=True)
class CycleVerdict:
    """One crop cycle of a parcel-year: its peak and the low that ended it, judged as a harvest.

    ``verdict`` is ``harvest``, ``not a harvest`` (``failed`` names the tests) or ``not ended``: NDVI
    never fell below ``harvest.max_ndvi_after`` after the peak (``low_*`` is then the lowest
    observation after the peak, or the peak itself when none follows).
    """

    peak_date: str
    peak_ndvi: float
    last_high_date: str
    low_date: str
    low_ndvi: float
    drop: float
    verdict: str
    failed: str


@dataclass(frozen=True, slots=True)
class HarvestExplanation:
    """The crop cycles of one parcel, with the parameters that judged them."""

    parcel_id: str
    params_hash: str
    cycles: list[CycleVerdict]

    def write(self, stream: TextIO) -> None:
        """Write the cycles as text lines, as ``cbm markers explain --marker harvest`` prints them."""
        stream.write(f"parcel {self.parcel_id}: {len(self.cycles)} crop cycles; marker parameters "
                     f"{self.params_hash[:12]}\n")
        for c in self.cycles:
            failed = f" ({c.failed})" if c.failed else ""
            stream.write(f"  peak {c.peak_date} NDVI {c.peak_ndvi:.2f} -> {c.last_high_date} .. {c.low_date} NDVI "
                         f"{c.low_ndvi:.2f} (drop {c.drop:.2f}): {c.verdict}{failed}\n")

    def write_csv(self, path: Path) -> None:
        """Write the cycles as CSV (one row per cycle, the columns of :class:`CycleVerdict`)."""
        write_verdicts(path, self.parcel_id, CycleVerdict, self.cycles)


def explain_harvest(series: SeriesTable, parcel_id: str, params: MarkerParams, *,
                    year: int | None = None) -> HarvestExplanation:
    """Judge every crop cycle of *parcel_id* in *series* (per calendar year, as the marker does).

    Wiggles of bare soil (a "cycle" whose peak stays below ``harvest.max_ndvi_after``) are left out.

    Args:
        series: time series holding the parcel (a file or a database read).
        parcel_id: the parcel.
        params: marker parameters (section ``harvest``), version 4 or later (``crop_cycles``).
        year: only this calendar year (None: every year of the series).

    Raises:
        NotFoundError: *parcel_id* is not in *series*.
        BadInputError: parameters before version 4 (one harvest after the year's peak, no cycles).
    """
    if not params.get("harvest", "crop_cycles") > 0:
        raise BadInputError(f"parameters {params.hash[:12]} (version {params.version}) date the harvest after the "
                            "year's peak, not per crop cycle: the cycle explanation needs version 4 or later")
    s2 = prepare(series.one_parcel(parcel_id), params).s2
    h = {key: params.get("harvest", key) for key in ("min_peak_ndvi", "max_ndvi_after", "min_drop", "first_doy",
                                                       "last_doy")}
    doy = s2.doy.astype(np.float64)
    cycles = []
    for this_year in sorted(set(s2.year[s2.valid].tolist())):
        if year is not None and this_year != year:
            continue
        idx = np.flatnonzero(s2.valid & (s2.year == this_year)).astype(np.int64)
        ends = np.empty((3, len(idx)), np.int64)
        m, open_peak = cycle_ends(len(idx), idx, doy, s2.ndvi, h["min_peak_ndvi"], h["max_ndvi_after"],
                                   h["min_drop"], h["first_doy"], h["last_doy"], ends[0], ends[1], ends[2])
        for k, peak, failed in ends[:, :m].T:
            low, top = idx[k], idx[peak]
            if s2.ndvi[top] < h["max_ndvi_after"]:
                continue  # a "cycle" that never rose above the stubble level is bare soil: not listed
            cycles.append(CycleVerdict(day_to_date(s2.day[top]), float(s2.ndvi[top]), day_to_date(s2.day[idx[k - 1]]),
                                       day_to_date(s2.day[low]), float(s2.ndvi[low]),
                                       float(s2.ndvi[top] - s2.ndvi[low]), "not a harvest" if failed else "harvest",
                                       failed_tests(CYCLE_TESTS, int(failed))))
        if len(idx) and open_peak < len(idx) - 1:  # the last cycle has no low after its peak
            top = idx[open_peak]
            low = idx[open_peak + 1 + int(np.argmin(s2.ndvi[idx[open_peak + 1:]]))]
            cycles.append(CycleVerdict(
                day_to_date(s2.day[top]), float(s2.ndvi[top]), day_to_date(s2.day[top]), day_to_date(s2.day[low]),
                float(s2.ndvi[low]), float(s2.ndvi[top] - s2.ndvi[low]), "not ended",
                f"NDVI after the peak stays at or above harvest.max_ndvi_after {h['max_ndvi_after']:.2f}"))
    return HarvestExplanation(str(parcel_id), params.hash, cycles)
