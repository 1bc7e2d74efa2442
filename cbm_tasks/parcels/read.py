"""Reading parcel registers: GeoPackage, shapefile, GeoJSON, FlatGeobuf, GML, GeoParquet, also zipped.

OGR formats are read through pyogrio's Arrow interface (a ``.zip`` through ``/vsizip/``, at the
register's place in the archive: :mod:`cbm_tasks.parcels.archive`); GeoParquet through pyarrow,
because the bundled GDAL has no Parquet driver.
Only the columns that are needed are read. The source CRS is kept: no reprojection.

Columns are found case-insensitively from candidate lists that cover the national registers
(:mod:`cbm_tasks.parcels.columns`). A parcel id may combine several columns (Denmark numbers
fields within an application: ``Journalnr,Marknr``); the values are then joined with ``/``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyogrio.errors
import pyproj

from cbm_tasks.errors import ParcelImportError
from cbm_tasks.parcels.archive import is_parquet, register_in
from cbm_tasks.parcels.columns import ParcelColumns, choose_columns, id_values, text_values
from cbm_tasks.parcels.geometry import MAX_AREA_CHANGE, clean_geometries, parcel_areas_m2

__all__ = ["ParcelTable", "Rejection", "read_parcels", "resolve_srid", "write_reject_report"]

log = logging.getLogger(__name__)

_LOGGED_REJECTIONS = 20  # one WARNING each; the rest are counted


@dataclass(frozen=True, slots=True)
class Rejection:
    """One feature left out of an import, and why."""

    source_fid: int  # 0-based position of the feature in the source layer
    parcel_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ParcelTable:
    """The importable parcels of one file, aligned arrays, in source order.

    Attributes:
        geometries: object array of 2-D MultiPolygons in *srid*.
        areas_m2: float64 array (planar in the CRS, geodesic for lon/lat CRSs).
        source_fids: int64 array, 0-based feature positions in the source layer.
    """

    source_file: str
    layer: str | None
    srid: int
    columns: ParcelColumns
    n_read: int
    parcel_ids: tuple[str, ...]
    crop_codes: tuple[str | None, ...]
    crop_names: tuple[str | None, ...]
    geometries: np.ndarray
    areas_m2: np.ndarray
    source_fids: np.ndarray
    n_repaired: int
    rejections: tuple[Rejection, ...]

    @property
    def n_parcels(self) -> int:
        """Number of parcels to import."""
        return len(self.parcel_ids)


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path | str  # a file, or a GDAL /vsizip/ path into an archive (parcels.archive)
    shown: str  # the name messages give it
    layer: str | None
    fields: tuple[str, ...]  # readable columns, including a named GeoPackage fid column
    crs: str | dict[str, Any] | None
    fid_column: str | None = None
    geometry: str | None = None  # a GeoParquet file's primary geometry column


def read_parcels(
    path: str | Path,
    *,
    layer: str | None = None,
    id_column: str | None = None,
    crop_code_column: str | None = None,
    crop_name_column: str | None = None,
    srid: int | None = None,
    max_area_change: float = MAX_AREA_CHANGE,
) -> ParcelTable:
    """Read, validate and clean the parcels of a vector file.

    Args:
        path: GeoPackage, shapefile, GeoJSON, FlatGeobuf, GML or GeoParquet file, or a zip archive of one.
        layer: layer to read; needed only when the file has several polygon layers.
        id_column: parcel id column (or several, comma-separated); None = auto-detect.
        crop_code_column: None = auto-detect; "-" = the file has none.
        crop_name_column: as crop_code_column.
        srid: EPSG code of the coordinates when the file declares no CRS. When the file has
            a CRS with an EPSG code, srid must match it (nothing is reprojected).
        max_area_change: see :func:`cbm_tasks.parcels.geometry.clean_geometries`.

    Returns:
        The parcels to import, plus the per-feature rejections (null id, non-polygon,
        empty or unrepairable geometry).

    Raises:
        ParcelImportError: missing or unreadable file, no or conflicting CRS, unknown or
            ambiguous columns, duplicate parcel ids. Every message names the file.
    """
    with register_in(Path(path).absolute()) as (dataset, name):
        source = _open(dataset, layer, name)
        srid_out, crs = resolve_srid(source.crs, srid=srid, source=name)
        columns = choose_columns(
            source.fields,
            id_column=id_column,
            crop_code_column=crop_code_column,
            crop_name_column=crop_name_column,
            source=name,
        )
        values, wkb = _read_columns(source, columns.all())
    parcel_ids = id_values([values[c] for c in columns.id])
    _check_unique(parcel_ids, columns, name)
    cleaned = clean_geometries(wkb, max_area_change=max_area_change)
    rejections: list[Rejection] = []
    for fid, (pid, reason) in enumerate(zip(parcel_ids, cleaned.reasons, strict=True)):
        if pid is None:
            rejections.append(Rejection(fid, None, f"no parcel id in {','.join(columns.id)}"))
        elif reason is not None:
            rejections.append(Rejection(fid, pid, reason))
    rejected = {r.source_fid for r in rejections}
    kept = np.array([fid not in rejected for fid in range(len(parcel_ids))], dtype=bool)
    idx = np.flatnonzero(kept)
    codes = text_values(values[columns.crop_code]) if columns.crop_code else [None] * len(parcel_ids)
    names = text_values(values[columns.crop_name]) if columns.crop_name else [None] * len(parcel_ids)
    geometries = cleaned.geometries[kept]
    try:
        areas = parcel_areas_m2(geometries, crs)
    except ValueError as err:
        raise ParcelImportError(f"{name}: {err}") from err
    for r in rejections[:_LOGGED_REJECTIONS]:
        log.warning("rejected parcel file=%s fid=%d parcel_id=%s reason=%s", name, r.source_fid, r.parcel_id, r.reason)
    if len(rejections) > _LOGGED_REJECTIONS:
        log.warning(
            "rejected parcels file=%s more=%d (see the reject report)", name, len(rejections) - _LOGGED_REJECTIONS
        )
    return ParcelTable(
        source_file=name,
        layer=source.layer,
        srid=srid_out,
        columns=columns,
        n_read=len(parcel_ids),
        parcel_ids=tuple(str(parcel_ids[i]) for i in idx),
        crop_codes=tuple(codes[i] for i in idx),
        crop_names=tuple(names[i] for i in idx),
        geometries=geometries,
        areas_m2=areas,
        source_fids=idx.astype(np.int64),
        n_repaired=int(cleaned.repaired[kept].sum()),
        rejections=tuple(rejections),
    )


def resolve_srid(crs: str | dict[str, Any] | None, *, srid: int | None, source: str) -> tuple[int, pyproj.CRS]:
    """Return the EPSG code and CRS of a layer from its declared CRS and the user's srid.

    Args:
        crs: the layer's CRS (WKT, "EPSG:n" or PROJJSON), None when it declares none.
        srid: the user's EPSG code, None when not given.
        source: file name for messages.

    Raises:
        ParcelImportError: no CRS and no srid; srid unknown to PROJ; srid contradicts the
            file's CRS; the file's CRS has no EPSG code and no srid was given.
    """
    user = _epsg_crs(srid, source) if srid is not None else None
    if crs is None:
        if user is None or srid is None:
            raise ParcelImportError(
                f"{source}: the layer declares no CRS; pass --srid (srid=) with the EPSG code of its coordinates"
            )
        return srid, user
    try:
        declared = pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as err:
        raise ParcelImportError(f"{source}: cannot parse the layer's CRS: {err}") from err
    epsg = 4326 if declared.to_authority() == ("OGC", "CRS84") else declared.to_epsg()
    if user is not None and srid is not None:
        if epsg is not None and epsg != srid:
            raise ParcelImportError(
                f"{source}: the layer's CRS is EPSG:{epsg} ({declared.name}) but srid {srid} was given; "
                "parcels are never reprojected: drop --srid or reproject the file"
            )
        if epsg is None:
            # an ESRI .prj often misses the EPSG id; accept srid only when PROJ sees the same CRS
            if not (declared.equals(user, ignore_axis_order=True) or declared.to_epsg(min_confidence=20) == srid):
                raise ParcelImportError(
                    f"{source}: the layer's CRS ({declared.name}) is not EPSG:{srid} ({user.name}); "
                    "parcels are never reprojected: reproject the file or give its real EPSG code"
                )
            log.warning("file=%s crs=%r has no EPSG code; PROJ matches it to srid=%d", source, declared.name, srid)
        return srid, user
    if epsg is None:
        raise ParcelImportError(
            f"{source}: the layer's CRS ({declared.name}) has no EPSG code; pass --srid N (srid=) when it is EPSG:N"
        )
    return epsg, declared


def _epsg_crs(srid: int, source: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_epsg(srid)
    except pyproj.exceptions.CRSError as err:
        raise ParcelImportError(f"{source}: srid {srid} is not an EPSG code known to PROJ") from err


def _open(path: Path | str, layer: str | None, shown: str) -> _Source:
    if isinstance(path, Path) and not path.exists():
        raise ParcelImportError(f"parcel file {shown} does not exist")
    if isinstance(path, Path) and is_parquet(path):
        return _open_geoparquet(path, layer, shown)
    try:
        layers = pyogrio.list_layers(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
        raise ParcelImportError(f"{shown}: not a vector format GDAL can read: {err}") from err
    names = [str(n) for n, _ in layers]
    if layer is None:
        polygonal = [str(n) for n, kind in layers if kind is not None and "Polygon" in str(kind)]
        if len(names) == 1:
            layer = names[0]
        elif len(polygonal) == 1:
            layer = polygonal[0]
        else:
            raise ParcelImportError(f"{shown}: several layers ({', '.join(names)}); choose one with --layer")
    elif layer not in names:
        raise ParcelImportError(f"{shown}: no layer {layer!r}; layers are: {', '.join(names)}")
    try:
        info = pyogrio.read_info(path, layer=layer)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
        raise ParcelImportError(f"{shown}: cannot read layer {layer!r}: {err}") from err
    if info["geometry_type"] is None:
        raise ParcelImportError(f"{shown}: layer {layer!r} has no geometry column")
    fields = tuple(str(f) for f in info["fields"])
    fid_column = str(info.get("fid_column") or "") or None
    if fid_column in fields:  # GeoJSON reports a property "id" as fid column too
        fid_column = None
    if fid_column is not None:  # a GeoPackage primary key is a real, stored column
        fields = (fid_column, *fields)
    return _Source(path, shown, layer, fields, info["crs"], fid_column)


def _open_geoparquet(path: Path, layer: str | None, shown: str) -> _Source:
    if layer is not None:
        raise ParcelImportError(f"{shown}: a GeoParquet file has no layers; drop --layer")
    geo = _geo_metadata(path, shown)
    primary = geo["primary_column"]
    meta = geo["columns"][primary]
    if meta.get("encoding", "WKB").upper() != "WKB":
        raise ParcelImportError(
            f"{shown}: geometry column {primary!r} has encoding {meta['encoding']!r}; only WKB is supported"
        )
    # GeoParquet: an absent "crs" means OGC:CRS84, an explicit null means unknown
    crs = meta["crs"] if "crs" in meta else "OGC:CRS84"
    fields = tuple(name for name in pq.read_schema(path).names if name != primary)
    return _Source(path, shown, None, fields, crs, geometry=primary)


def _geo_metadata(path: Path, shown: str) -> dict[str, Any]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise ParcelImportError(f"{shown}: not a readable Parquet file: {err}") from err
    raw = (schema.metadata or {}).get(b"geo")
    if raw is None:
        raise ParcelImportError(f"{shown}: a Parquet file without GeoParquet 'geo' metadata")
    try:
        geo: dict[str, Any] = json.loads(raw)
        geo["columns"][geo["primary_column"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ParcelImportError(f"{shown}: malformed GeoParquet 'geo' metadata: {err}") from err
    return geo


def _read_columns(source: _Source, columns: Sequence[str]) -> tuple[dict[str, list[Any]], list[bytes | None]]:
    """Return {column: values} and the WKB of every feature, in source order."""
    if source.geometry is not None:  # GeoParquet (_open_geoparquet)
        try:
            table = pq.read_table(source.path, columns=[*columns, source.geometry])
        except (pa.ArrowException, OSError) as err:
            raise ParcelImportError(f"{source.shown}: cannot read: {err}") from err
        geometry = source.geometry
    else:
        wanted = [c for c in columns if c != source.fid_column]
        try:
            meta, table = pyogrio.read_arrow(
                source.path,
                layer=source.layer,
                columns=wanted,
                return_fids=len(wanted) < len(columns),
            )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as err:
            raise ParcelImportError(f"{source.shown}: cannot read layer {source.layer!r}: {err}") from err
        geometry = meta["geometry_name"] or "wkb_geometry"
    values = {c: table[c].to_pylist() for c in columns}
    return values, table[geometry].to_pylist()


def _check_unique(parcel_ids: Sequence[str | None], columns: ParcelColumns, source: str) -> None:
    positions: dict[str, list[int]] = {}
    for fid, pid in enumerate(parcel_ids):
        if pid is not None:
            positions.setdefault(pid, []).append(fid)
    duplicates = [(pid, fids) for pid, fids in positions.items() if len(fids) > 1]
    if not duplicates:
        return
    shown = "; ".join(f"{pid!r} at features {', '.join(map(str, fids[:4]))}" for pid, fids in duplicates[:5])
    more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
    raise ParcelImportError(
        f"{source}: {len(duplicates)} parcel id(s) in {','.join(columns.id)} occur more than once: "
        f"{shown}{more}; the register must be corrected (or another --id-column chosen)"
    )


def write_reject_report(path: str | Path, rejections: Sequence[Rejection]) -> Path:
    """Write the rejections as CSV (source_fid, parcel_id, reason); return the path."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_fid", "parcel_id", "reason"])
        for r in rejections:
            writer.writerow([r.source_fid, r.parcel_id or "", r.reason])
    return out
