"""The parcel layers of one window and the reduction of a band over them.

A window's parcels are one label raster (int32, 0 = no parcel) in which each pixel belongs to
at most one parcel, plus *overlap layers* for the parcels that overlap another
(``cbm.parcel_overlap``): coloured so that no two overlapping ones share a layer, each layer
rasterised in its bounding box and kept as the flat window indices of its pixels. A pixel
whose centre lies in two parcels thus counts for both, as in exactextract and rasterstats;
the extra work grows with the overlapping parcels only, and a register without overlaps
costs what it did before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine

from cbm_tasks.extraction.bands import BandSource
from cbm_tasks.extraction.categorical import class_counts
from cbm_tasks.extraction.rasterize import rasterize_parcels
from cbm_tasks.extraction.zonal import zonal_stats
from cbm_tasks.timeseries import write

__all__ = ["BandResult", "ParcelLayers", "overlap_layers", "reduce_band"]

_STAT_FIELDS = ("count", "mean", "std", "min", "max", "p25", "p50", "p75")


@dataclass(frozen=True, slots=True)
class ParcelLayers:
    """The parcels of one window: a label raster, plus the pixels of parcels that overlap others."""

    labels: np.ndarray  # int32 (rows, cols); 0 = no parcel, overlapping parcels left out
    overlap_index: np.ndarray  # int64 (m,): flat indices into the window of overlapping parcels' pixels
    overlap_keys: np.ndarray  # int32 (m,): the parcel of each of those pixels (a pixel may repeat)


@dataclass(frozen=True, slots=True)
class BandResult:
    """One band reduced per parcel: the parcels with a valid pixel and their statistics or class counts."""

    band: BandSource
    parcel_keys: np.ndarray  # parcels with a valid pixel
    values: np.ndarray  # float32 (n, 8) statistics, or int32 (n, n_classes) class counts


def overlap_layers(wkbs: Sequence[bytes], keys: np.ndarray, pairs: np.ndarray, *, transform: Affine,
                   shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise overlapping parcels so that each gets all its pixels; return (flat window indices, keys).

    The parcels are coloured so that no two overlapping ones share a colour (greedy, in key
    order: a pair of overlapping parcels needs 2 colours, a parcel under 3 others 4); the
    parcels of one colour are burnt together into a raster of their bounding box. A few
    rasterisations per window, however many overlapping parcels there are.

    Args:
        wkbs: the parcels' polygons as WKB, in the window's CRS.
        keys: their parcel keys (int32).
        pairs: (n, 2) overlapping key pairs; pairs with a key not in *keys* are ignored.
        transform: the window's affine transform.
        shape: the window's (rows, columns).

    Returns:
        int64 flat indices into the window and the int32 key of each; a pixel appears once per
        parcel that holds its centre.
    """
    geoms = np.asarray(shapely.from_wkb(list(wkbs)), dtype=object).reshape(len(wkbs))
    colours = _colour(keys, pairs)
    inverse = ~transform
    indices: list[np.ndarray] = [np.empty(0, np.int64)]
    owners: list[np.ndarray] = [np.empty(0, np.int32)]
    for colour in range(int(colours.max(initial=-1)) + 1):
        members = np.flatnonzero(colours == colour)
        box = shapely.bounds(geoms[members])
        lower_left, upper_right = (box[:, 0].min(), box[:, 1].min()), (box[:, 2].max(), box[:, 3].max())
        corners = [inverse * lower_left, inverse * upper_right]
        col0 = max(0, math.floor(min(c for c, _ in corners)))
        col1 = min(shape[1], math.ceil(max(c for c, _ in corners)))
        row0 = max(0, math.floor(min(r for _, r in corners)))
        row1 = min(shape[0], math.ceil(max(r for _, r in corners)))
        if col1 <= col0 or row1 <= row0:
            continue
        burnt = rasterize_parcels(geoms[members], keys[members].astype(np.int32),
                                  transform=transform * Affine.translation(col0, row0),
                                  shape=(row1 - row0, col1 - col0))
        rr, cc = np.nonzero(burnt)
        indices.append((rr + row0).astype(np.int64) * shape[1] + (cc + col0))
        owners.append(burnt[rr, cc])
    return np.concatenate(indices), np.concatenate(owners)


def _colour(keys: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Greedy colouring of the overlap graph among *keys*: the smallest colour no overlapping neighbour has."""
    position = {int(k): i for i, k in enumerate(keys)}
    neighbours: list[list[int]] = [[] for _ in range(len(keys))]
    for a, b in pairs.tolist():
        i, j = position.get(a), position.get(b)
        if i is not None and j is not None:
            neighbours[i].append(j)
            neighbours[j].append(i)
    colours = np.full(len(keys), -1, np.int64)
    for i in np.argsort(keys, kind="stable").tolist():
        taken = {int(colours[j]) for j in neighbours[i]}
        colours[i] = next(c for c in range(len(taken) + 1) if c not in taken)
    return colours


def _reduce_layer(band: BandSource, labels: np.ndarray, values: np.ndarray, n_labels: int) -> BandResult:
    if band.categorical:
        per_class = class_counts(labels, values, band=band.name, n_classes=int(band.n_classes or 0),
                                 nodata=None if band.nodata is None else int(band.nodata))
        return BandResult(band, per_class.keys, np.asarray(per_class.counts, np.int32))
    result = zonal_stats(labels, values, band=band.name, nodata=band.nodata, n_labels=n_labels)
    result = result.scaled(scale=band.scale, offset=band.offset)
    block = np.column_stack([getattr(result, field) for field in _STAT_FIELDS]).astype(np.float32)
    return BandResult(band, result.keys, block.reshape(len(result.keys), write.STATS_PER_BAND))


def reduce_band(band: BandSource, layers: ParcelLayers, values: np.ndarray, n_labels: int) -> BandResult:
    """Reduce one band over the parcel layers of its window.

    Args:
        band: the band (categorical bands give class counts, others the 8 statistics, scaled).
        layers: the window's label raster and overlap layers.
        values: the band's pixels in the window, the label raster's shape.
        n_labels: the largest parcel key of the set.

    Returns:
        The parcels with a valid pixel, ascending, and their values.
    """
    result = _reduce_layer(band, layers.labels, values, n_labels)
    if not len(layers.overlap_index):
        return result
    # the overlapping parcels as one row of pixels: each pixel once per parcel that holds its centre
    shared = _reduce_layer(band, layers.overlap_keys.reshape(1, -1),
                           values.reshape(-1)[layers.overlap_index].reshape(1, -1), n_labels)
    keys = np.concatenate([result.parcel_keys, shared.parcel_keys])
    order = np.argsort(keys, kind="stable")
    return BandResult(band, keys[order], np.concatenate([result.values, shared.values])[order])
