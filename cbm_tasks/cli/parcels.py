"""``cbm parcels``: import parcel registers and list the parcel sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbm_tasks.ops import settings
from cbm_tasks.parcels.columns import NO_COLUMN

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm parcels ...`` to the command line."""
    parser = subparsers.add_parser("parcels", help="parcel registers (one parcel set per AOI and year)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    imp = commands.add_parser(
        "import",
        help="import a parcel register (GeoPackage, shapefile/zip, GeoJSON, FlatGeobuf, GeoParquet)",
        description="Replace the parcel set of an AOI and year with the parcels of FILE, in one transaction. "
        "Parcel keys of parcel ids already known are kept.",
    )
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--aoi", required=True, help="AOI name, lower case (created when new)")
    imp.add_argument("--year", required=True, type=int, help="campaign year")
    imp.add_argument("--id-column", help="parcel id column, or several comma-separated (default: detect)")
    imp.add_argument("--crop-code-column", help=f"crop code column (default: detect; {NO_COLUMN!r}: the file has none)")
    imp.add_argument("--crop-name-column", help=f"crop name column (default: detect; {NO_COLUMN!r}: the file has none)")
    imp.add_argument("--layer", help="layer to read when the file has several")
    imp.add_argument("--srid", type=int, help="EPSG code of the coordinates when the file declares no CRS")
    imp.add_argument("--reject-report", type=Path, metavar="FILE.csv", help="write rejected features to this CSV")
    imp.add_argument("--strict", action="store_true", help="fail when any feature is rejected")
    imp.add_argument("--inner-buffer", type=int, metavar="METRES",
                     help="extract from the parcels shrunk by this many metres, keeping edge pixels (mixed with the "
                     "neighbour) out; 5-10 is usual for Sentinel-2. Default: the set's current buffer (0 when new). "
                     "A parcel it would empty is extracted whole")
    imp.set_defaults(func=_import)
    listing = commands.add_parser("list", help="parcel sets per AOI and year")
    listing.add_argument("--aoi", help="only this AOI")
    listing.set_defaults(func=_list)


def _import(args: argparse.Namespace) -> int:
    from cbm_tasks import db  # pandas, pyogrio, shapely: loaded only to import
    from cbm_tasks.parcels.overlaps import SLIVER_M2
    from cbm_tasks.parcels.sets import import_parcels
    from cbm_tasks.pipeline.extract import requeue_incomplete

    with db.connect(settings.database_url()) as conn:
        report = import_parcels(
            conn,
            args.file,
            aoi=args.aoi,
            year=args.year,
            id_column=args.id_column,
            crop_code_column=args.crop_code_column,
            crop_name_column=args.crop_name_column,
            layer=args.layer,
            srid=args.srid,
            strict=args.strict,
            reject_report=args.reject_report,
            inner_buffer_m=args.inner_buffer,
        )
        requeued = requeue_incomplete(conn, aois=[report.aoi]) if report.version > 1 else []
    sys.stdout.write(
        f"parcel set {report.parcel_set_id} ({report.aoi} {report.year}) version {report.version}, "
        f"EPSG:{report.srid}: {report.n_imported} of {report.n_read} parcels imported, "
        f"{report.n_repaired} repaired, {report.n_rejected} rejected; "
        f"{report.n_new} new, {report.n_changed} changed, {report.n_removed} removed\n"
    )
    if report.columns is not None:
        columns = report.columns
        sys.stdout.write(f"columns: parcel id {','.join(columns.id)}, crop code {columns.crop_code or '-'}, "
                         f"crop name {columns.crop_name or '-'}\n")
        if columns.crop_code is None and args.crop_code_column != NO_COLUMN:
            sys.stdout.write("warning: no crop code column found: the parcels are extracted, but no aid scheme "
                             "applies to a parcel without a crop code (--crop-code-column names it)\n")
    if report.inner_buffer_m:
        sys.stdout.write(f"inner buffer {report.inner_buffer_m} m: the extraction reads the parcels shrunk by it; "
                         f"{report.n_unbuffered} parcels too small for it are extracted whole\n")
    for r in report.rejections[:20]:
        sys.stdout.write(f"  rejected feature {r.source_fid} ({r.parcel_id or 'no id'}): {r.reason}\n")
    if report.n_rejected > 20:
        sys.stdout.write(f"  ... {report.n_rejected - 20} more (see --reject-report)\n")
    if requeued:
        sys.stdout.write(
            f"{len(requeued)} images queued again (ready) for the {report.n_new} new and "
            f"{report.n_changed} changed parcels: the next cbm_extract run extracts those parcels only\n"
        )
    overlaps = report.overlaps
    if overlaps.n_pairs:
        sys.stdout.write(
            f"warning: {overlaps.n_pairs} overlapping parcel pairs ({overlaps.n_parcels} parcels, "
            f"{overlaps.area_m2:.1f} m2 shared, {overlaps.n_slivers} of the pairs slivers under {SLIVER_M2:g} m2; "
            "all pairs in cbm.parcel_overlap); largest:\n"
        )
        for o in overlaps.largest:
            sys.stdout.write(f"  {o.parcel_id_a} overlaps {o.parcel_id_b}: {o.area_m2:.3f} m2\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.aoi import list_parcel_sets

    with db.connect(settings.database_url()) as conn:
        sets = list_parcel_sets(conn, aoi=args.aoi)
    header = ("aoi", "year", "set", "parcels", "srid", "buffer_m", "version", "imported_at", "source")
    rows = [
        (
            s.aoi,
            str(s.year),
            str(s.parcel_set_id),
            str(s.n_parcels),
            str(s.srid),
            str(-s.inner_buffer_m) if s.inner_buffer_m else "0",
            str(s.version),
            s.imported_at.strftime("%Y-%m-%d %H:%M:%S%z"),
            s.source_file + (f" [{s.source_layer}]" if s.source_layer else ""),
        )
        for s in sets
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        sys.stdout.write("  ".join([*cells, row[-1]]) + "\n")
    if not rows:
        sys.stdout.write("no parcel sets\n")
    return 0
