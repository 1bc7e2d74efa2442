"""Claimed images grouped into extraction batches, one mapped ``cbm_extract`` task each.

A mapped Airflow task costs ~2 s of start-up, about what extracting 20 of the demo's 640 m chips
takes, while a full Sentinel-2 tile takes tens of seconds. So images are grouped until a batch
carries roughly a fixed amount of work, measured in megapixels read: the part of an image's
footprint inside the AOI's parcel extent, divided by the pixel area of each band, plus a fixed
per-image cost (:data:`IMAGE_OVERHEAD_MEGAPIXELS`: opening the files, the parcel queries, the
write transaction and the lineage record). An image estimated at the target or above stays
alone in its task; hundreds of chips share one. Inside a batch every image is still its own unit
of work (``pipeline.extract.extract_batch``). Pure functions: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

__all__ = [
    "DEFAULT_PIXELS_PER_M2",
    "IMAGE_OVERHEAD_MEGAPIXELS",
    "TARGET_MEGAPIXELS",
    "ClaimedImage",
    "ExtractBatch",
    "estimate_megapixels",
    "plan_batches",
    "sized_image",
]

# Work per batch. One 10 m Sentinel-2 tile over parcels everywhere reads ~700 Mpx (4 bands at
# 10 m, 7 at 20 m): it is above the target and runs alone. 256 Mpx is ~10-20 s of extraction on
# one core, so the ~2 s a mapped task costs stays around 10 % of it.
TARGET_MEGAPIXELS = 512.0
# The fixed cost of one image, as the pixels that take as long (~0.05 s per image, measured on the
# demo's chips: band files opened, 6-10 queries, one write transaction, one lineage record).
IMAGE_OVERHEAD_MEGAPIXELS = 6.0
# Pixels per m2 when the catalogue gives no band resolutions (a Sentinel-2 L2A SAFE from CDSE):
# 4 bands at 10 m and 7 at 20 m, the bands the extraction reads from an L2A product.
DEFAULT_PIXELS_PER_M2 = 4 / 10**2 + 7 / 20**2


@dataclass(frozen=True, slots=True)
class ClaimedImage:
    """A claimed image with what the batching needs to know of it.

    Attributes:
        aoi: the AOI it was claimed for.
        product_id: cbm.product id.
        acquired_at: sensing start (batches list images in time order).
        grid: images of one grid share the label raster (e.g. ``S2MSI2A/T31UDS``,
            ``CARD-BS/R037``); they are kept together.
        megapixels: estimated pixels read (:func:`estimate_megapixels`); None when unknown (no
            footprint and no parcel extent): such an image is a batch of its own.
    """

    aoi: str
    product_id: int
    acquired_at: datetime
    grid: str
    megapixels: float | None

    def __post_init__(self) -> None:
        if self.megapixels is not None and not 0 <= self.megapixels < math.inf:
            raise ValueError(f"product {self.product_id}: megapixels must be >= 0 and finite, got {self.megapixels}")


@dataclass(frozen=True, slots=True)
class ExtractBatch:
    """Images of one AOI extracted in one mapped task; its XCom form is :meth:`as_dict`.

    Attributes:
        aoi: the AOI of every image of the batch.
        product_ids: the images, in extraction order.
        claimed_by: the claim the images are held under (``registry.claim``'s worker).
        megapixels: the batch's estimated work, per-image overhead included.
        label: the mapped task's name in the UI (:func:`_label`).
    """

    aoi: str
    product_ids: tuple[int, ...]
    claimed_by: str
    megapixels: float
    label: str = field(default="")

    def __post_init__(self) -> None:
        if not self.product_ids:
            raise ValueError(f"batch of AOI {self.aoi!r}: no product id")
        if len(set(self.product_ids)) != len(self.product_ids):
            raise ValueError(f"batch of AOI {self.aoi!r}: product ids repeat: {list(self.product_ids)}")

    def as_dict(self) -> dict[str, Any]:
        """Return the batch as a JSON-able dict (the XCom of the claim task)."""
        return {"aoi": self.aoi, "product_ids": list(self.product_ids), "claimed_by": self.claimed_by,
                "megapixels": round(self.megapixels, 3), "label": self.label}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ExtractBatch:
        """Return the batch of :meth:`as_dict`'s form.

        Raises:
            ValueError: a key is missing or unknown (the message names it).
        """
        keys = {"aoi", "product_ids", "claimed_by", "megapixels", "label"}
        if set(value) != keys:
            raise ValueError(f"extraction batch: expected keys {sorted(keys)}, got {sorted(value)}")
        return cls(aoi=str(value["aoi"]), product_ids=tuple(int(p) for p in value["product_ids"]),
                   claimed_by=str(value["claimed_by"]), megapixels=float(value["megapixels"]),
                   label=str(value["label"]))


def estimate_megapixels(area_m2: float, resolutions_m: Sequence[float] = ()) -> float:
    """Return the megapixels read from an image: *area_m2* over the pixel area of each band.

    Args:
        area_m2: the part of the image's footprint that covers parcels (m2).
        resolutions_m: the pixel size of each band read; empty = :data:`DEFAULT_PIXELS_PER_M2`.

    Raises:
        ValueError: a negative area or a resolution that is not positive.
    """
    if area_m2 < 0 or math.isnan(area_m2):
        raise ValueError(f"area_m2 must be >= 0, got {area_m2}")
    if any(not r > 0 for r in resolutions_m):
        raise ValueError(f"band resolutions must be > 0 m, got {list(resolutions_m)}")
    per_m2 = sum(1 / r**2 for r in resolutions_m) if resolutions_m else DEFAULT_PIXELS_PER_M2
    return area_m2 * per_m2 / 1e6


def sized_image(aoi: str, product_id: int, acquired_at: datetime, *, product_type: str, tile: str | None,
                relative_orbit: int | None, area_m2: float | None, bands: Any) -> ClaimedImage:
    """Return a claimed image sized from its catalogue record.

    Args:
        aoi: the AOI it was claimed for.
        product_id: cbm.product id.
        acquired_at: sensing start.
        product_type: e.g. ``S2MSI2A``, ``CARD-BS``; part of the grid name.
        tile: MGRS tile (Sentinel-2), or None; images of one tile share a grid.
        relative_orbit: relative orbit (Sentinel-1), or None; used when there is no tile.
        area_m2: the footprint inside the AOI's parcel extent; None when unknown.
        bands: the band descriptors of ``Product.attributes["bands"]`` (ARCHITECTURE.md,
            "Formats"), or None; a band without ``resolution_m`` counts at the finest known one.
    """
    where = tile or (f"R{relative_orbit:03d}" if relative_orbit is not None else "")
    resolutions = [float(b["resolution_m"]) for b in (bands if isinstance(bands, list) else [])
                   if isinstance(b, dict) and isinstance(b.get("resolution_m"), int | float) and b["resolution_m"] > 0]
    if resolutions and isinstance(bands, list) and len(bands) > len(resolutions):
        resolutions += [min(resolutions)] * (len(bands) - len(resolutions))
    megapixels = None if area_m2 is None else estimate_megapixels(area_m2, resolutions)
    return ClaimedImage(aoi=aoi, product_id=product_id, acquired_at=acquired_at, grid=f"{product_type}/{where}",
                        megapixels=megapixels)


def plan_batches(
    images: Iterable[ClaimedImage],
    *,
    claimed_by: str,
    target_megapixels: float = TARGET_MEGAPIXELS,
    image_overhead_megapixels: float = IMAGE_OVERHEAD_MEGAPIXELS,
) -> list[ExtractBatch]:
    """Group claimed images into batches of about *target_megapixels* of work each.

    Images of different AOIs never share a batch (each batch reads one AOI's parcels). Within
    an AOI, images of one grid are kept together, in time order. An image whose work reaches
    the target is a batch of its own. The others are split into ``ceil(work / target)``
    batches of about equal work, so that no small batch is left over at the end.

    Args:
        images: the claimed images (any order).
        claimed_by: the claim they are held under (recorded in each batch).
        target_megapixels: work per batch; 0 gives one batch per image.
        image_overhead_megapixels: the fixed cost of one image, added to its pixels.

    Returns:
        The batches: per AOI (sorted), the single large images first, then the others.

    Raises:
        ValueError: a negative or infinite target, a negative overhead, or an image claimed twice.
    """
    if not 0 <= target_megapixels < math.inf:
        raise ValueError(f"target_megapixels must be >= 0 and finite, got {target_megapixels}")
    if not image_overhead_megapixels >= 0:
        raise ValueError(f"image_overhead_megapixels must be >= 0, got {image_overhead_megapixels}")
    ordered = sorted(images, key=lambda i: (i.aoi, i.grid, i.acquired_at, i.product_id))
    seen: set[tuple[str, int]] = set()
    for image in ordered:
        if (image.aoi, image.product_id) in seen:
            raise ValueError(f"product {image.product_id} is listed twice for AOI {image.aoi!r}")
        seen.add((image.aoi, image.product_id))
    batches: list[ExtractBatch] = []
    for aoi, of_aoi in groupby(ordered, key=lambda i: i.aoi):
        work = [(image, target_megapixels if image.megapixels is None else image.megapixels + image_overhead_megapixels)
                for image in of_aoi]
        large = [(image, w) for image, w in work if w >= target_megapixels]
        small = [(image, w) for image, w in work if w < target_megapixels]
        groups: list[list[tuple[ClaimedImage, float]]] = [[item] for item in large]
        total = sum(w for _, w in small)
        if small:
            # equal shares: each batch closes once it holds its share, so at most n batches come out
            share = total / max(1, math.ceil(total / target_megapixels)) if target_megapixels > 0 else 0.0
            current: list[tuple[ClaimedImage, float]] = []
            for item in small:
                current.append(item)
                if sum(w for _, w in current) >= share * (1 - 1e-9):
                    groups.append(current)
                    current = []
            if current:
                groups.append(current)
        batches.extend(ExtractBatch(aoi=aoi, product_ids=tuple(i.product_id for i, _ in group), claimed_by=claimed_by,
                                    megapixels=sum(w for _, w in group), label=_label(aoi, [i for i, _ in group]))
                       for group in groups)
    return batches


def _label(aoi: str, images: Sequence[ClaimedImage]) -> str:
    """The batch's name in the UI: AOI, count, first and last acquisition date and product id."""
    first = min(images, key=lambda i: (i.acquired_at, i.product_id))
    if len(images) == 1:
        return f"{aoi}: {first.grid} {first.acquired_at:%Y-%m-%d} #{first.product_id}"
    last = max(images, key=lambda i: (i.acquired_at, i.product_id))
    grids = sorted({i.grid for i in images})
    grid = grids[0] if len(grids) == 1 else f"{len(grids)} grids"
    return (f"{aoi}: {len(images)} images, {grid}, {first.acquired_at:%Y-%m-%d} #{first.product_id}"
            f" .. {last.acquired_at:%Y-%m-%d} #{last.product_id}")
