"""Which CARD products to make: jobs from catalogue products, as pure functions.

A job is one CARD product for one AOI:

- **CARD-BS**: one per IW GRD product whose footprint intersects the AOI.
- **CARD-COH6 / CARD-COH12**: one per reference SLC that intersects the AOI and has a partner
  pass on the same relative orbit, in the same direction, 6 (or 12) days later. Slices of the
  two dates are cut at different places (S1A and S1B slices of a track are offset by about half
  a slice), so the part of the reference over the AOI may need **two consecutive slices** of the
  later pass; the job then has three sources. The shortest interval with a partner wins
  (``intervals_days=(6, 12)``: 6-day coherence while two satellites flew, 12-day otherwise).
  A coherence product is dated by its reference (the earlier pass).

A product outside every AOI never becomes a job (nor does one without a footprint: nothing
proves it covers a parcel). The job key names the product type, the AOI and the source
products, so planning twice gives the same keys: it is the CARD product's ``uid`` in the
catalogue, and a key already there is not made again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from cbm_tasks.catalogue.product import Product

__all__ = [
    "COHERENCE_TYPES",
    "GRD_TYPES",
    "SLC_TYPES",
    "CardJob",
    "card_bs_jobs",
    "coherence_jobs",
    "plan_jobs",
]

log = logging.getLogger(__name__)

GRD_TYPES = ("IW_GRDH_1S", "IW_GRDH_1S-COG")
SLC_TYPES = ("IW_SLC__1S",)
COHERENCE_TYPES = {6: "CARD-COH6", 12: "CARD-COH12"}
# consecutive slices of one pass start ~25-28 s apart; 60 s tells "next slice" from "other pass"
_NEXT_SLICE_S = 60.0
# two slices instead of one only when the second adds at least 1 % of the AOI's part
_MIN_GAIN = 0.01


@dataclass(frozen=True, slots=True)
class CardJob:
    """One CARD product to make for one AOI.

    Attributes:
        key: idempotent identity, ``<card_type>:<aoi>:<source name>[+<source name>...]``; the
            CARD product's ``uid`` in the catalogue.
        card_type: ``CARD-BS``, ``CARD-COH6`` or ``CARD-COH12``.
        aoi: AOI name.
        sources: catalogue uids of the inputs: (GRD,) or (reference SLC, later SLC[, next later SLC]).
        source_names: product names of the inputs, in the same order.
        acquired_at: sensing start of the (reference) input.
        platform, relative_orbit, orbit_direction: of the (reference) input.
        footprint_wkt: where the CARD product can have values: the inputs' common footprint
            within the AOI (EPSG:4326 WKT).
        coverage: share of the reference's part of the AOI the other date covers (1.0 for CARD-BS).
    """

    key: str
    card_type: str
    aoi: str
    sources: tuple[str, ...]
    source_names: tuple[str, ...]
    acquired_at: datetime
    platform: str | None
    relative_orbit: int | None
    orbit_direction: str | None
    footprint_wkt: str
    coverage: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """Return the job as a JSON-able dict (an XCom value)."""
        return {
            "key": self.key, "card_type": self.card_type, "aoi": self.aoi, "sources": list(self.sources),
            "source_names": list(self.source_names), "acquired_at": self.acquired_at.isoformat(),
            "platform": self.platform, "relative_orbit": self.relative_orbit,
            "orbit_direction": self.orbit_direction, "footprint_wkt": self.footprint_wkt, "coverage": self.coverage,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> CardJob:
        """Rebuild a job from :meth:`as_dict` (a mapped task's argument)."""
        return cls(
            key=value["key"], card_type=value["card_type"], aoi=value["aoi"], sources=tuple(value["sources"]),
            source_names=tuple(value["source_names"]), acquired_at=datetime.fromisoformat(value["acquired_at"]),
            platform=value["platform"], relative_orbit=value["relative_orbit"],
            orbit_direction=value["orbit_direction"], footprint_wkt=value["footprint_wkt"],
            coverage=float(value["coverage"]),
        )  # fmt: skip


def _aoi_shapes(aois: Mapping[str, str]) -> dict[str, BaseGeometry]:
    shapes: dict[str, BaseGeometry] = {}
    for name, wkt in aois.items():
        try:
            shape = shapely.from_wkt(wkt)
        except shapely.errors.GEOSException as err:
            raise ValueError(f"AOI {name!r}: footprint is not valid WKT: {err}") from err
        if shape.is_empty:
            raise ValueError(f"AOI {name!r}: footprint is empty")
        shapes[name] = shape
    return shapes


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The areal part of an intersection (a shared edge makes a GeometryCollection with lines)."""
    parts = shapely.get_parts(shapely.get_parts(geometry))
    polygons = [part for part in parts if part.geom_type in ("Polygon", "MultiPolygon") and part.area > 0]
    return polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)


def _footprint(product: Product) -> BaseGeometry | None:
    if product.footprint_wkt is None:
        log.warning("no job for product=%s: it has no footprint, so nothing shows it covers an AOI", product.name)
        return None
    return shapely.make_valid(shapely.from_wkt(product.footprint_wkt))


def card_bs_jobs(products: Iterable[Product], aois: Mapping[str, str]) -> list[CardJob]:
    """Return one CARD-BS job per (GRD product, AOI it intersects).

    Args:
        products: catalogue products (de-duplicated); other types than IW GRD are ignored.
        aois: AOI name -> area to cover (the parcels' extent), EPSG:4326 WKT.

    Returns:
        Jobs sorted by sensing time, then AOI.

    Raises:
        ValueError: an AOI footprint is not valid WKT or is empty.
    """
    shapes = _aoi_shapes(aois)
    jobs: list[CardJob] = []
    for product in products:
        if product.product_type not in GRD_TYPES:
            continue
        footprint = _footprint(product)
        if footprint is None:
            continue
        for aoi, shape in shapes.items():
            inside = footprint.intersection(shape)
            if inside.is_empty or inside.area == 0:
                continue
            jobs.append(CardJob(
                key=f"CARD-BS:{aoi}:{product.name}", card_type="CARD-BS", aoi=aoi, sources=(product.uid,),
                source_names=(product.name,), acquired_at=product.acquired_at, platform=product.platform,
                relative_orbit=product.relative_orbit, orbit_direction=product.orbit_direction,
                footprint_wkt=_polygonal(inside).wkt,
            ))  # fmt: skip
    jobs.sort(key=lambda job: (job.acquired_at, job.aoi, job.key))
    log.info("planned card_type=CARD-BS aois=%d jobs=%d", len(shapes), len(jobs))
    return jobs


def _later_options(later: Sequence[Product]) -> list[tuple[Product, ...]]:
    """Single slices and runs of two consecutive slices of one pass (sorted by start)."""
    options: list[tuple[Product, ...]] = [(product,) for product in later]
    for first, second in pairwise(later):
        consecutive = (second.acquired_at - first.acquired_at).total_seconds() <= _NEXT_SLICE_S
        if consecutive and first.platform == second.platform:
            options.append((first, second))
    return options


def _best_partner(
    reference: Product, area: BaseGeometry, track: Sequence[Product], footprints: Mapping[str, BaseGeometry], *,
    interval: timedelta, tolerance_s: float,
) -> tuple[tuple[Product, ...], float, BaseGeometry] | None:
    """The fewest consecutive later slices that cover most of *area* (the reference within the AOI)."""
    later = [
        product for product in track
        if abs((product.acquired_at - reference.acquired_at - interval).total_seconds()) <= tolerance_s
        and footprints[product.uid].intersects(area)
    ]  # fmt: skip
    best: tuple[tuple[Product, ...], float, BaseGeometry] | None = None
    for option in _later_options(sorted(later, key=lambda product: product.acquired_at)):
        covered = area.intersection(shapely.union_all([footprints[product.uid] for product in option]))
        coverage = covered.area / area.area
        # a second slice is worth reading (a whole SLC) only when it adds a visible share
        if best is None or coverage > best[1] + _MIN_GAIN:
            best = (option, coverage, covered)
    return best


def coherence_jobs(
    products: Iterable[Product], aois: Mapping[str, str], *, intervals_days: Sequence[int] = (6, 12),
    tolerance_s: float = 300.0, min_coverage: float = 0.5,
) -> list[CardJob]:
    """Return one coherence job per (reference SLC, AOI) with a repeat pass *intervals_days* later.

    Args:
        products: catalogue products (de-duplicated); other types than IW SLC are ignored.
        aois: AOI name -> area to cover, EPSG:4326 WKT.
        intervals_days: repeat intervals to try, shortest first; each must be in ``COHERENCE_TYPES``.
        tolerance_s: largest difference between the time gap and the interval (S1A and S1B slice
            starts of one track differ by up to ~45 s; see :mod:`cbm_tasks.card.pairs`).
        min_coverage: smallest share of the reference's part of the AOI the later slices must cover.

    Returns:
        Jobs sorted by reference sensing time, then AOI.

    Raises:
        ValueError: an unknown interval, a bad tolerance or coverage, or a bad AOI footprint.
    """
    unknown = [days for days in intervals_days if days not in COHERENCE_TYPES]
    if unknown or not intervals_days:
        raise ValueError(f"intervals_days must be among {sorted(COHERENCE_TYPES)}, got {list(intervals_days)}")
    if tolerance_s < 0 or not 0 < min_coverage <= 1:
        raise ValueError(f"tolerance_s must be >= 0 and min_coverage within (0, 1], got {tolerance_s}, {min_coverage}")
    shapes = _aoi_shapes(aois)
    footprints: dict[str, BaseGeometry] = {}
    tracks: dict[tuple[int, str], list[Product]] = defaultdict(list)
    for product in products:
        if product.product_type not in SLC_TYPES or product.relative_orbit is None or product.orbit_direction is None:
            continue
        footprint = _footprint(product)
        if footprint is not None and product.uid not in footprints:
            footprints[product.uid] = footprint
            tracks[(product.relative_orbit, product.orbit_direction)].append(product)
    jobs: list[CardJob] = []
    for track in tracks.values():
        for reference in track:
            for aoi, shape in shapes.items():
                area = footprints[reference.uid].intersection(shape)
                if area.is_empty or area.area == 0:
                    continue
                for days in intervals_days:
                    found = _best_partner(reference, area, track, footprints, interval=timedelta(days=days),
                                          tolerance_s=tolerance_s)
                    if found is None or found[1] < min_coverage:
                        continue
                    later, coverage, covered = found
                    inputs = (reference, *later)
                    card_type = COHERENCE_TYPES[days]
                    jobs.append(CardJob(
                        key=f"{card_type}:{aoi}:" + "+".join(product.name for product in inputs),
                        card_type=card_type, aoi=aoi, sources=tuple(product.uid for product in inputs),
                        source_names=tuple(product.name for product in inputs), acquired_at=reference.acquired_at,
                        platform=reference.platform, relative_orbit=reference.relative_orbit,
                        orbit_direction=reference.orbit_direction, footprint_wkt=_polygonal(covered).wkt,
                        coverage=round(coverage, 4),
                    ))  # fmt: skip
                    break
    jobs.sort(key=lambda job: (job.acquired_at, job.aoi, job.key))
    log.info("planned card_type=coherence intervals_days=%s aois=%d tracks=%d jobs=%d",
             list(intervals_days), len(shapes), len(tracks), len(jobs))
    return jobs


def plan_jobs(
    products: Iterable[Product], aois: Mapping[str, str], *, card_types: Sequence[str] = ("CARD-BS", "CARD-COH6",
                                                                                         "CARD-COH12"),
    known_keys: Iterable[str] = (),
) -> list[CardJob]:
    """Return the CARD jobs of *products* over *aois* that are not made yet.

    Args:
        products: catalogue products (de-duplicated).
        aois: AOI name -> area to cover, EPSG:4326 WKT.
        card_types: which CARD products to make; coherence intervals follow from the
            ``CARD-COH<days>`` types asked for (shortest first).
        known_keys: keys of CARD products already in the catalogue (made or being made).

    Raises:
        ValueError: an unknown CARD type or a bad AOI footprint.
    """
    by_name = {name: days for days, name in COHERENCE_TYPES.items()}
    unknown = [name for name in card_types if name != "CARD-BS" and name not in by_name]
    if unknown:
        raise ValueError(f"card_types must be among CARD-BS, {', '.join(by_name)}; got {list(card_types)}")
    products = list(products)
    jobs = card_bs_jobs(products, aois) if "CARD-BS" in card_types else []
    intervals = sorted(by_name[name] for name in card_types if name in by_name)
    if intervals:
        jobs += coherence_jobs(products, aois, intervals_days=intervals)
    known = set(known_keys)
    return [job for job in jobs if job.key not in known]
