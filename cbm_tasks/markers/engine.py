"""Run every marker over a :class:`SeriesTable`: the one call the CLI and the database path make.

:func:`run_markers` prepares the series (validity, NDVI, dB, cloud dips), runs the mowing and the
crop-event kernels and returns a :class:`MarkerResult`: all events as flat arrays plus, per parcel,
the observations used and rejected (lineage) and the days of the clear S2 observations (the
traffic light's data-sufficiency test needs them per scheme window).

Each event names the images that prove it (``MarkerResult.products``): the kernels return row
indices of the observations they used (:class:`~cbm_tasks.markers.mowing.EventArrays` ``obs``),
mapped here to product ids in one NumPy gather per sensor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cbm_tasks.markers.crop_events import CROP_MARKERS, detect_crop_events
from cbm_tasks.markers.mowing import OBS_S1_DATE, SOURCE_BITS, EventArrays, detect_mowing
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import PreparedSeries, prepare
from cbm_tasks.markers.series import SeriesTable, group_offsets

__all__ = ["MARKERS", "PRODUCT_ROLES", "EventRow", "MarkerResult", "dated_products", "distinct_products",
           "evidence_lists", "markers_from_prepared", "run_markers", "sources_text"]

log = logging.getLogger(__name__)

MARKERS = ("mowing", *CROP_MARKERS)
# columns of MarkerResult.products: the S2 images dated start / main / end, the S1 coherence pair that
# dated main (a cut inside a long S2 gap), and the two pairs between which coherence rose and raised the
# confidence: the first after the cut (short grass) and the last before it (tall grass)
PRODUCT_ROLES = ("start", "main", "end", "s1_date", "s1_support", "s1_baseline")


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event as written to events.csv and stored in the database."""

    parcel_id: str
    marker: str
    seq: int
    start_date: str
    main_date: str
    end_date: str
    confidence: float
    value: float
    sources: str
    products: str  # ids of the images that prove the event, ';'-joined (evidence_lists order); '' when unknown


def sources_text(bits: int) -> str:
    """Return the sensors of a ``SOURCE_BITS`` mask as ``s2+coh`` (in SOURCE_BITS order)."""
    return "+".join(name for name, bit in SOURCE_BITS.items() if bits & bit) or "-"


@dataclass(frozen=True, slots=True)
class MarkerResult:
    """Events of all markers for a set of parcels.

    Attributes:
        parcel_ids: (n_parcels,) ids, the order the ``parcel`` indices refer to.
        parcel, marker, seq: int32 (n,): parcel index, index into ``MARKERS``, 1-based number of
            the event of this marker and parcel in date order.
        start, main, end: float64 (n,), days since 1970-01-01 UTC.
        confidence, value: float64 (n,).
        sources: int32 (n,), ``SOURCE_BITS`` mask.
        products: int64 (n, 6), product ids of the images behind each event by ``PRODUCT_ROLES``,
            -1 where the role has no image or the input gave no product ids.
        clear_offsets, clear_day: the valid S2 observation days of parcel p are
            ``clear_day[clear_offsets[p]:clear_offsets[p + 1]]``.
        n_used, n_rejected: int32 (n_parcels,), S2 observations used / rejected (clouds, dips, NaN).
        params: the parameters of the run (``params.hash`` for lineage).
    """

    parcel_ids: np.ndarray
    parcel: np.ndarray
    marker: np.ndarray
    seq: np.ndarray
    start: np.ndarray
    main: np.ndarray
    end: np.ndarray
    confidence: np.ndarray
    value: np.ndarray
    sources: np.ndarray
    products: np.ndarray
    clear_offsets: np.ndarray
    clear_day: np.ndarray
    n_used: np.ndarray
    n_rejected: np.ndarray
    params: MarkerParams

    @property
    def n_events(self) -> int:
        """Number of events."""
        return len(self.parcel)

    def rows(self) -> Iterator[EventRow]:
        """Yield the events as rows, ordered by parcel id, marker and date (deterministic)."""
        dates = [_date_strings(days) for days in (self.start, self.main, self.end)]
        parcel_ids = self.parcel_ids[self.parcel].tolist()
        confidence = np.round(self.confidence, 3).tolist()
        value = np.round(self.value, 4).tolist()
        texts = {int(bits): sources_text(int(bits)) for bits in np.unique(self.sources)}
        products = [";".join(map(str, ids)) for ids in evidence_lists(self.products)]
        for i, (marker, seq, bits) in enumerate(zip(self.marker.tolist(), self.seq.tolist(), self.sources.tolist(),
                                                     strict=True)):
            yield EventRow(parcel_ids[i], MARKERS[marker], seq, dates[0][i], dates[1][i], dates[2][i],
                           confidence[i], value[i], texts[bits], products[i])


def distinct_products(products: np.ndarray) -> np.ndarray:
    """Return a copy of *products* (n, k) with an id already named in an earlier role set to -1.

    An image in two roles (bare soil: start = main) is named once, in its first role.
    """
    ids = products.copy()
    for later in range(1, ids.shape[1]):
        for earlier in range(later):
            ids[ids[:, later] == ids[:, earlier], later] = -1
    return ids


def evidence_lists(products: np.ndarray) -> list[list[int]]:
    """Return per event the distinct product ids of *products* (n, 6), in ``PRODUCT_ROLES`` order, without -1."""
    return [[value for value in row if value >= 0] for row in distinct_products(products).tolist()]


def dated_products(products: np.ndarray) -> np.ndarray:
    """Return (n, 3) the images dated start, main and end of each event (-1: none).

    main is the S2 observation dated main_date, else the S1 coherence pair that dated it; a main date
    between observations (a mowing's midpoint) has none.
    """
    main = np.where(products[:, 1] >= 0, products[:, 1], products[:, PRODUCT_ROLES.index("s1_date")])
    return np.column_stack((products[:, 0], main, products[:, 2]))


def _products(obs: np.ndarray, prepared: PreparedSeries) -> np.ndarray:
    """Map observation rows (``EventArrays.obs``) to product ids: S2 columns, then coherence columns."""
    products = np.full(obs.shape, -1, np.int64)
    for columns, product in ((slice(0, OBS_S1_DATE), prepared.s2.product),
                             (slice(OBS_S1_DATE, None), prepared.coherence.product)):
        rows = obs[:, columns]
        named = rows >= 0
        if len(product) and named.any():
            products[:, columns] = np.where(named, product[np.where(named, rows, 0)], -1)
    return products


def _date_strings(days: np.ndarray) -> list[str]:
    """``YYYY-MM-DD`` of each day number (vectorised :func:`day_to_date`)."""
    return [str(d) for d in np.datetime_as_string(np.floor(days).astype(np.int64).astype("datetime64[D]"))]


def _combine(parcel_ids: np.ndarray, per_marker: dict[str, EventArrays]) -> tuple[np.ndarray, ...]:
    parts = [(MARKERS.index(name), events) for name, events in per_marker.items()]
    parcel = np.concatenate([events.parcel for _, events in parts]).astype(np.int32)
    marker = np.concatenate([np.full(len(events.parcel), code, np.int32) for code, events in parts])
    fields = [np.concatenate([getattr(events, name) for _, events in parts])
              for name in ("start", "main", "end", "confidence", "value", "sources", "obs")]
    # parcels in id order (parcel_ids are sorted), then marker order, then date
    order = np.lexsort((fields[1], marker, parcel))
    parcel, marker = parcel[order], marker[order]
    fields = [field[order] for field in fields]
    new_group = np.ones(len(parcel), bool)
    new_group[1:] = (parcel[1:] != parcel[:-1]) | (marker[1:] != marker[:-1])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(parcel)), 0))
    seq = (np.arange(len(parcel)) - group_start + 1).astype(np.int32)
    return (parcel, marker, seq, *fields)


def markers_from_prepared(prepared: PreparedSeries, params: MarkerParams, *, use_s1: bool = True) -> MarkerResult:
    """Run all markers on already prepared series (see :func:`run_markers`)."""
    per_marker = {"mowing": detect_mowing(prepared, params, use_s1=use_s1),
                  **detect_crop_events(prepared.s2, params)}
    parcel, marker, seq, start, main, end, confidence, value, sources, obs = _combine(prepared.parcel_ids,
                                                                                       per_marker)
    s2 = prepared.s2
    owner = np.repeat(np.arange(prepared.n_parcels), np.diff(s2.offsets))
    valid_owner = owner[s2.valid]
    n_used = np.bincount(valid_owner, minlength=prepared.n_parcels).astype(np.int32)
    n_rejected = (np.diff(s2.offsets) - n_used).astype(np.int32)
    return MarkerResult(prepared.parcel_ids, parcel, marker, seq, start, main, end, confidence, value,
                        sources.astype(np.int32), _products(obs, prepared),
                        group_offsets(valid_owner, prepared.n_parcels), s2.day[s2.valid], n_used, n_rejected, params)


def run_markers(series: SeriesTable, params: MarkerParams, *, use_s1: bool = True) -> MarkerResult:
    """Compute every marker of every parcel in *series*.

    Args:
        series: the observations (file reader or database).
        params: marker parameters (:func:`cbm_tasks.markers.params.load_params`).
        use_s1: let Sentinel-1 raise the mowing confidence where present; False = Sentinel-2 only.

    Returns:
        The events and per-parcel observation counts.
    """
    t0 = time.perf_counter()
    result = markers_from_prepared(prepare(series, params), params, use_s1=use_s1)
    log.info("markers computed parcels=%d events=%d params=%s seconds=%.3f", series.n_parcels, result.n_events,
             params.hash[:12], time.perf_counter() - t0)
    return result
