"""The images behind a parcel's decisions, cut around the parcel, for its audit report.

An auditor asks which data proved a light; the report names the images of each event (their
product ids), and this module shows them: for every event that decided a light, and then the
other dated events of the parcel (mowing, harvest, bare soil, emergence), the image its start date
comes from and the image its end date comes from (for a mowing: the last image before the cut and
the first after it), side by side; and where a mowing rule is red, the largest NDVI fall of its window
that the marker did not take for a cut. The pictures of one event share one stretch
(:func:`cbm_tasks.api.chips.render_comparable`), so that the change between them is the change on
the ground.

An image that cannot be read (its file left the store, a transient store error) does not stop the
report: its picture is replaced by the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date

import psycopg

from cbm_tasks.api.chips import ChipSource, display_bands, extracted_product, parcel_geometry, render_comparable
from cbm_tasks.errors import CbmError, NotFoundError
from cbm_tasks.markers.mowing_explain import StepVerdict
from cbm_tasks.markers.series import PRODUCT_TYPES
from cbm_tasks.report.decisions import LightRecord, MarkerEventRecord
from cbm_tasks.report.lineage_read import ProductLineage
from cbm_tasks.store import Store
from cbm_tasks.traffic_light.explain import LightExplanation

__all__ = ["EVIDENCE_MARKERS", "EventEvidence", "EvidenceImage", "event_evidence"]

log = logging.getLogger(__name__)

# markers whose start and end images show the change they mark (data sufficiency and vegetation are periods)
EVIDENCE_MARKERS = ("mowing", "harvest", "bare_soil", "emergence")


@dataclass(frozen=True, slots=True)
class EvidenceImage:
    """One image of an event, as the report shows it.

    Attributes:
        role: ``start`` or ``end`` (the event date the image gives).
        product_id, product_name, acquired: the image.
        bands: the bands shown (``B04 B03 B02`` true colour, ``B08 B04 B03`` false colour, or one band grey).
        png: the picture with the parcel outline; None when the image could not be read.
        problem: why there is no picture (empty when there is one).
    """

    role: str
    product_id: int
    product_name: str
    acquired: date | None
    bands: str
    png: bytes | None
    problem: str = ""


@dataclass(frozen=True, slots=True)
class EventEvidence:
    """The images of one event and the schemes whose light it decided.

    ``seq`` 0 is no event: the largest NDVI fall in the window of a red mowing rule, which the marker did
    not take for a cut (``note`` says why), shown so that an inspector can judge it by eye.
    """

    marker: str
    seq: int
    main: date | None
    decides: tuple[str, ...]
    images: tuple[EvidenceImage, ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Parcel:
    parcel_set_id: int
    srid: int
    geometry: dict[str, object]


def _chosen(events: Sequence[MarkerEventRecord], lights: Sequence[LightRecord],
            max_events: int) -> list[tuple[MarkerEventRecord, tuple[str, ...]]]:
    """The events to show, deciding ones first (in the lights' order), then the others by date."""
    decides: dict[tuple[str, int], list[str]] = {}
    for light in lights:
        if light.event_marker and light.event_seq > 0:
            decides.setdefault((light.event_marker, light.event_seq), []).append(light.scheme)
    shown = [e for e in events if e.marker in EVIDENCE_MARKERS and e.start_product is not None
             and e.end_product is not None]
    shown.sort(key=lambda e: ((e.marker, e.seq) not in decides, e.main or date.max, e.marker, e.seq))
    return [(e, tuple(decides.get((e.marker, e.seq), ()))) for e in shown[:max_events]]


def _pictures(conn: psycopg.Connection, store: Store, parcel: _Parcel, label: str, start_product: int,
              end_product: int, size: int) -> tuple[EvidenceImage, ...]:
    """The start and end images around the parcel in one stretch, or the reason they cannot be shown."""
    pairs = [("start", start_product), ("end", end_product)]
    try:
        sources = [ChipSource(pid, extracted_product(conn, parcel.parcel_set_id, pid,
                                                     f"parcel set {parcel.parcel_set_id}"), parcel.geometry,
                              parcel.srid) for _, pid in pairs]
    except CbmError as err:  # the product's record is gone
        return tuple(EvidenceImage(role, pid, "", None, "", None, str(err)) for role, pid in pairs)
    bands: tuple[str, ...] = ()
    try:
        bands = display_bands(sources[0].product, store)
        pictures: list[bytes | None] = list(render_comparable(sources, store, bands, size=size))
        problem = ""
    except CbmError as err:  # a file gone from the store, a transient store error: the report goes on
        log.warning("audit evidence of %s: %s", label, err)
        pictures, problem = [None] * len(sources), str(err)
    return tuple(EvidenceImage(role, source.product_id, source.product.name, source.product.acquired_at.date(),
                               " ".join(bands), png, problem)
                 for (role, _), source, png in zip(pairs, sources, pictures, strict=True))


def _s2_product_of_day(products: Sequence[ProductLineage], day: str) -> int | None:
    """The Sentinel-2 image of the parcel's series acquired on *day* (``YYYY-MM-DD``, UTC; the first of an overpass)."""
    found = [p.product_id for p in products
             if PRODUCT_TYPES.get(p.product_type) == "s2" and p.acquired_at.astimezone(UTC).date().isoformat() == day]
    return min(found) if found else None


def _largest_rejected_falls(explanations: Sequence[LightExplanation], falls: Sequence[StepVerdict],
                            ) -> list[tuple[str, StepVerdict]]:
    """(scheme, fall) of each red mowing rule: its window's largest NDVI fall that was not taken for a cut."""
    out = []
    for light in explanations:
        for rule in light.rules:
            if rule.marker != "mowing" or rule.colour != "red" or rule.require != "present":
                continue
            rejected = [f for f in falls if f.verdict != "mowing" and rule.window_from <= f.main_date <= rule.window_to]
            if rejected:
                out.append((light.scheme, max(rejected, key=lambda f: f.drop)))
    return out


def event_evidence(conn: psycopg.Connection, store: Store, *, parcel_set_id: int, parcel_key: int, srid: int,
                   events: Sequence[MarkerEventRecord], lights: Sequence[LightRecord],
                   explanations: Sequence[LightExplanation] = (), falls: Sequence[StepVerdict] = (),
                   products: Sequence[ProductLineage] = (), max_events: int = 4,
                   size: int = 192) -> list[EventEvidence]:
    """The start and end images of the parcel's events, deciding events first, at most *max_events*.

    Before them, for each red mowing rule (no cut found in its window), the images of the window's
    largest NDVI fall that the marker did not take for a cut, with the tests it failed.

    Args:
        conn: CbM database (the events' products and the parcel's outline).
        store: the object store holding the images.
        parcel_set_id: the parcel's set.
        parcel_key: the parcel.
        srid: the CRS of the set's geometries.
        events: the parcel's stored events (:func:`cbm_tasks.report.decisions.events`).
        lights: its stored lights (which events decided them).
        explanations: its lights rule by rule (:func:`cbm_tasks.traffic_light.explain.explain_light`).
        falls: its NDVI falls judged as cuts (:func:`cbm_tasks.markers.mowing_explain.explain_mowing`).
        products: the images of its series (the falls' dates are matched to Sentinel-2 images of that day).
        max_events: events shown at most (two pictures each).
        size: the longer side of a picture in pixels at most.
    """
    chosen = _chosen(events, lights, max_events)
    rejected = _largest_rejected_falls(explanations, falls)
    if not chosen and not rejected:
        return []
    try:
        geometry = parcel_geometry(conn, parcel_set_id, parcel_key, f"parcel set {parcel_set_id}")
    except NotFoundError:  # removed since the report read it
        return []
    parcel = _Parcel(parcel_set_id, srid, geometry)
    out = []
    for scheme, fall in rejected:
        start, end = _s2_product_of_day(products, fall.start_date), _s2_product_of_day(products, fall.end_date)
        if start is not None and end is not None:
            out.append(EventEvidence(
                "mowing", 0, date.fromisoformat(fall.main_date), (scheme,),
                _pictures(conn, store, parcel, f"the fall of {fall.start_date}", start, end, size),
                f"largest NDVI fall in the window, drop {fall.drop:.2f} ({fall.before:.2f} -> {fall.after:.2f}), "
                "not a cut: "
                f"{fall.failed or fall.verdict}"))
    out.extend(EventEvidence(event.marker, event.seq, event.main, decides,
                             _pictures(conn, store, parcel, f"{event.marker} #{event.seq}",
                                       int(event.start_product or 0), int(event.end_product or 0), size))
               for event, decides in chosen)
    return out
