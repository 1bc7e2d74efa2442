"""Open and read raster files through a store, and translate GDAL's errors into ours.

Also reads the acquisition time a raster file states (tags, else its name). URIs are parsed
by the store (``cbm_tasks.store``): a relative path is relative to the store root, never to
the working directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

import rasterio
from rasterio.errors import RasterioError

from cbm_tasks.errors import BandError, CbmError, CorruptProductError, TransientError
from cbm_tasks.store.base import is_remote

__all__ = ["RasterStore", "is_remote", "open_raster", "raster_acquired_at", "raster_error"]


class RasterStore(Protocol):
    """What the extraction needs of an object store (cbm_tasks.store.Store satisfies it)."""

    def gdal_path(self, uri: str) -> str:
        """Return the path GDAL opens for *uri* (local path or /vsis3/...)."""

    def rasterio_env(self) -> dict[str, Any]:
        """Return the GDAL options to pass to ``rasterio.Env``."""

    def exists(self, uri: str) -> bool:
        """Return whether the object exists (TransientError when the store cannot be reached)."""

    def read_bytes(self, uri: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Return the object's bytes (NotFoundError when absent)."""

    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[Any]:
        """Yield the objects (with a ``uri`` attribute) under *prefix*."""


# GDAL/curl messages of failures that may pass (the object store, not the file, is the problem)
_TRANSIENT = re.compile(r"HTTP response code: (5\d\d|429)|curl error|timed? ?out|Could not resolve|"
                        r"Couldn't connect|Connection (refused|reset)|SSL", re.IGNORECASE)


def _what(href: str, product: str | None, band: str | None) -> str:
    parts = ([f"product {product}"] if product else []) + ([f"band {band}"] if band else [])
    return ": ".join(parts + [f"file {href}"])


def raster_error(err: RasterioError, href: str, *, store: RasterStore, product: str | None = None,
                 band: str | None = None, action: str = "open") -> CbmError:
    """Translate a GDAL error on *href* into the error the pipeline acts on.

    A missing file is a BandError; a network failure on a remote file (HTTP 5xx/429, curl and
    connection errors, or the store itself unreachable) a TransientError, so Airflow retries;
    anything else a CorruptProductError (truncated or not a raster).
    """
    what, text = _what(href, product, band), str(err)
    if is_remote(href):
        if _TRANSIENT.search(text):
            return TransientError(f"{what}: cannot {action} it: {text}")
        if action == "open" and not store.exists(href):  # raises TransientError when the store is unreachable
            return BandError(f"{what} does not exist: {text}")
    elif not store.exists(href):  # a relative path is relative to the store root
        return BandError(f"{what} does not exist")
    return CorruptProductError(f"{what}: cannot {action} it: {text}")


def open_raster(href: str, *, store: RasterStore, product: str | None = None,
                band: str | None = None) -> rasterio.DatasetReader:
    """Open *href* through *store* for reading (call inside ``rasterio.Env(**store.rasterio_env())``).

    Raises:
        BandError: the file does not exist.
        TransientError: a remote file could not be reached.
        CorruptProductError: it exists but cannot be opened as a raster.
    """
    if not is_remote(href) and not store.exists(href):  # the store resolves a relative path in its root
        raise BandError(f"{_what(href, product, band)} does not exist")
    try:
        return rasterio.open(store.gdal_path(href))
    except RasterioError as err:
        raise raster_error(err, href, store=store, product=product, band=band) from err


_TAG_TIMES = ("ACQUISITION_START_TIME", "ACQUISITION_TIME", "ACQUISITION_DATE", "DATETIME", "TIFFTAG_DATETIME")
_NAME_TIME = re.compile(r"(?<!\d)(\d{8})T(\d{6})(?!\d)")
_NAME_DATE = re.compile(r"(?<!\d)(20\d{2})-?([01]\d)-?([0-3]\d)(?!\d)")


def _parse_time(text: str) -> datetime | None:
    text = text.strip()
    for candidate in (text.replace("Z", "+00:00"), text.replace(":", "-", 2).replace("Z", "+00:00")):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None


def _time_from_name(name: str) -> datetime | None:
    match = _NAME_TIME.search(name)
    if match:
        return datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    match = _NAME_DATE.search(name)
    if match:
        try:
            return datetime(int(match.group(1)), int(match.group(2)), int(match.group(3)), tzinfo=UTC)
        except ValueError:
            return None
    return None


def raster_acquired_at(href: str, *, store: RasterStore) -> datetime | None:
    """Return the acquisition time a raster file states, or None when it states none.

    Looked for, in order: the tags ACQUISITION_START_TIME, ACQUISITION_TIME, ACQUISITION_DATE,
    DATETIME, TIFFTAG_DATETIME (``YYYY:MM:DD HH:MM:SS`` read as UTC), then a date in the file
    name (``20180405T105031`` or ``2018-04-05``). A naive time is taken as UTC.

    Raises:
        BandError, CorruptProductError: as :func:`raster_file_bands`.
    """
    with rasterio.Env(**store.rasterio_env()), open_raster(href, store=store) as dataset:
        tags = {k.upper(): v for k, v in dataset.tags().items()}
    for key in _TAG_TIMES:
        if key in tags:
            parsed = _parse_time(tags[key])
            if parsed is not None:
                return parsed
    return _time_from_name(href.rstrip("/").rsplit("/", 1)[-1])
