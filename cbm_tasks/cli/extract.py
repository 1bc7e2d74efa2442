"""``cbm extract``: per-parcel statistics of one image file or SAFE folder, from the command line."""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime

from cbm_tasks.errors import BadInputError
from cbm_tasks.ops import settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm extract IMAGE ...`` to the command line."""
    parser = subparsers.add_parser(
        "extract",
        help="extract one image (GeoTIFF/COG or S2 L2A SAFE folder) for the parcels of an AOI",
        description="Reduce IMAGE to per-parcel statistics of every band and store them (replacing the "
        "image's earlier rows) in one transaction. An image without a catalogue record is registered "
        "in cbm.product (catalogue 'file', uid = its absolute path). The parcels rasterised on the image's "
        "grid are kept on disk (CBM_LABEL_CACHE_DIR, default <scratch>/labels, as for the Airflow tasks): the next "
        "image of the same tile reuses them.",
    )
    parser.add_argument("image", metavar="IMAGE", help="GeoTIFF/COG or S2 L2A .SAFE folder: a local path, or "
                        "s3://bucket/key with the store set by the CBM_STORE_* variables")
    parser.add_argument("--aoi", required=True, help="AOI whose parcels are used")
    parser.add_argument("--year", required=True, type=int, help="year of the parcel set")
    parser.add_argument("--obs-time", help="acquisition time, ISO 8601 (UTC when no offset); required when the "
                        "image states none (tags TIFFTAG_DATETIME/ACQUISITION_*, SAFE metadata, date in its name)")
    parser.add_argument("--product-id", type=int, help="store the rows under this catalogue product")
    parser.add_argument("--product-type", help="product type of a newly registered image (default UNKNOWN, "
                        "S2MSI2A for a SAFE folder), e.g. CARD-BS, CARD-COH6")
    parser.add_argument("--bands", help="names of the file's bands in file order, comma-separated (e.g. "
                        "B02,B03,B04,B08,SCL), for a file whose band descriptions are absent or other; recorded with "
                        "the image")
    parser.add_argument("--scale", type=float, help="physical = DN * scale + offset for every band but SCL, for a "
                        "file that does not state it (e.g. 0.0001 for Sentinel-2 reflectance); recorded with the image")
    parser.add_argument("--offset", type=float, help="see --scale (e.g. -0.1 for Sentinel-2 L2A of processing "
                        "baseline 04.00 and later)")
    parser.set_defaults(func=_extract)


def _obs_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise BadInputError(f"--obs-time must be ISO 8601 (e.g. 2018-04-05T10:50:31Z), got {text!r}") from err


def _band_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise BadInputError(f"--bands must name every band, comma-separated (e.g. B02,B03,B04,B08), got {text!r}")
    return names


def _decoding(scale: float | None, offset: float | None) -> None:
    if scale is not None and not (math.isfinite(scale) and scale != 0):
        raise BadInputError(f"--scale must be a finite number other than 0, got {scale}")
    if offset is not None and not math.isfinite(offset):
        raise BadInputError(f"--offset must be a finite number, got {offset}")


def _extract(args: argparse.Namespace) -> int:
    from cbm_tasks import db  # the engine (numpy, numba, rasterio): loaded only to extract
    from cbm_tasks.pipeline.files import extract_file
    from cbm_tasks.store import open_store

    obs_time = _obs_time(args.obs_time)
    _decoding(args.scale, args.offset)
    bands = _band_names(args.bands)
    store = open_store(settings.store_config())
    with db.connect(settings.database_url()) as conn:
        result = extract_file(conn, store, args.image, aoi=args.aoi, year=args.year, obs_time=obs_time,
                              product_id=args.product_id, product_type=args.product_type,
                              label_cache=settings.label_cache(), bands=bands, scale=args.scale, offset=args.offset)
    sys.stdout.write(
        f"product {result.product_id}: {result.n_parcels} parcels, {result.n_rows} statistics rows, "
        f"{result.n_bands} bands, parcel set {result.parcel_set_id}, {result.seconds:.2f} s\n"
    )
    if result.warning is not None:
        sys.stdout.write(f"warning: image {args.image} {result.warning}\n")
    return 0
