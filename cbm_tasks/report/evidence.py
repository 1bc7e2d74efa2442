"""The images behind a parcel's decisions, cut around the parcel, for its audit report.

An auditor asks which data proved a light; the report names the images of each event (their
product ids), and this module shows them: for every event that decided a light, and then the
other dated events of the parcel (mowing, harvest, bare soil, emergence), the image its start date
comes from and the image its end date comes from (for a mowing: the last image before the cut and
the first after it), side by side. The pictures of one event share one stretch
(:func:`cbm_tasks.api.chips.render_comparable`), so that the change between them is the change on
the ground.

An image that cannot be read (its file left the store, a transient store error) does not stop the
report: its picture is replaced by the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import psycopg

from cbm_tasks.api.chips import ChipSource, display_bands, extracted_product, render_comparable
from cbm_tasks.errors import CbmError
from cbm_tasks.report.decisions import LightRecord, MarkerEventRecord
from cbm_tasks.store import Store

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
    """The images of one event and the schemes whose light it decided."""

    marker: str
    seq: int
    main: date | None
    decides: tuple[str, ...]
    images: tuple[EvidenceImage, ...]


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


def _images(conn: psycopg.Connection, store: Store, parcel_set_id: int, srid: int, geometry: dict[str, object],
            event: MarkerEventRecord, size: int) -> tuple[EvidenceImage, ...]:
    pairs = [("start", int(event.start_product or 0)), ("end", int(event.end_product or 0))]
    try:
        sources = [ChipSource(pid, extracted_product(conn, parcel_set_id, pid, f"parcel set {parcel_set_id}"),
                              geometry, srid) for _, pid in pairs]
    except CbmError as err:  # the product's record is gone
        return tuple(EvidenceImage(role, pid, "", None, "", None, str(err)) for role, pid in pairs)
    bands: tuple[str, ...] = ()
    try:
        bands = display_bands(sources[0].product, store)
        pictures: list[bytes | None] = list(render_comparable(sources, store, bands, size=size))
        problem = ""
    except CbmError as err:  # a file gone from the store, a transient store error: the report goes on
        log.warning("audit evidence of %s #%d: %s", event.marker, event.seq, err)
        pictures, problem = [None] * len(sources), str(err)
    return tuple(EvidenceImage(role, source.product_id, source.product.name, source.product.acquired_at.date(),
                               " ".join(bands), png, problem)
                 for (role, _), source, png in zip(pairs, sources, pictures, strict=True))


def event_evidence(conn: psycopg.Connection, store: Store, *, parcel_set_id: int, parcel_key: int, srid: int,
                   events: Sequence[MarkerEventRecord], lights: Sequence[LightRecord], max_events: int = 4,
                   size: int = 192) -> list[EventEvidence]:
    """The start and end images of the parcel's events, deciding events first, at most *max_events*.

    Args:
        conn: CbM database (the events' products and the parcel's outline).
        store: the object store holding the images.
        parcel_set_id: the parcel's set.
        parcel_key: the parcel.
        srid: the CRS of the set's geometries.
        events: the parcel's stored events (:func:`cbm_tasks.report.decisions.events`).
        lights: its stored lights (which events decided them).
        max_events: events shown at most (two pictures each).
        size: the longer side of a picture in pixels at most.
    """
    chosen = _chosen(events, lights, max_events)
    if not chosen:
        return []
    row = conn.execute("SELECT ST_AsGeoJSON(geom) FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_key = %s",
                       (parcel_set_id, parcel_key)).fetchone()
    if row is None:
        return []
    geometry = json.loads(row[0])
    return [EventEvidence(event.marker, event.seq, event.main, decides,
                          _images(conn, store, parcel_set_id, srid, geometry, event, size))
            for event, decides in chosen]
