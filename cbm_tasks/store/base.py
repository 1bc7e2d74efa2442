"""The store interface, its configuration and the local-folder store.

Every reader of product files (catalogue, extraction, CARD processing) goes through a
``Store`` built from a ``StoreConfig``, so the same code runs on a laptop with files on disk
and in production on CDSE ``eodata`` (https://eodata.dataspace.copernicus.eu) or any
S3-compatible object store (MinIO, Ceph, AWS).

URIs understood by both stores:
    - an absolute local path (``/data/S2/B04.tif``) or ``file:///data/S2/B04.tif``;
    - a path relative to ``StoreConfig.root`` (local store: a folder; S3 store: a key prefix in
      ``StoreConfig.bucket``);
    - ``s3://bucket/key`` (S3 store only). A URI ending in ``/`` names a prefix (a SAFE folder).

Rasters are opened in place where possible: ``gdal_path(uri)`` gives ``/vsis3/bucket/key``
and ``rasterio_env()`` the GDAL options, so a COG is read with HTTP range requests and never
downloaded whole. ``local_copy(uri)`` exists for tools that need real files (SNAP).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cbm_tasks.errors import ConfigError, NotFoundError, StoreError

__all__ = [
    "ACCEPTED_URI_FORMS",
    "LocalStore",
    "ObjectInfo",
    "Store",
    "StoreConfig",
    "check_byte_range",
    "is_remote",
    "local_path",
    "scratch_folder",
    "split_s3_uri",
]

log = logging.getLogger(__name__)

ACCEPTED_URI_FORMS = (
    "an absolute path, file:///absolute/path, a path relative to the store root, "
    "or s3://bucket/key (S3 store only)"
)
_KINDS = ("local", "s3")
_OPTIONAL_FIELDS = ("bucket", "endpoint_url", "access_key", "secret_key", "region", "scratch_dir")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where product files live; built once from the Airflow connection ``cbm_store``.

    An unknown keyword (a misspelt connection extra) raises ``TypeError`` at construction.
    The credentials are left out of ``repr`` so the config can be logged.

    Attributes:
        kind: ``local`` (a folder, the default) or ``s3`` (an S3-protocol object store).
        root: local store: the folder relative paths are resolved in; S3 store: the key prefix
            relative keys are resolved under (in ``bucket``).
        bucket: S3 store: the bucket of relative keys; ``s3://`` URIs may name any bucket.
        endpoint_url: S3 endpoint, e.g. ``https://eodata.dataspace.copernicus.eu``; None = AWS.
        access_key, secret_key: S3 credentials; None = boto3's default chain (env, profile, role).
        region: S3 region (CDSE: ``default``); None = boto3's default.
        scratch_dir: parent folder of ``local_copy`` scratch folders;
            None = ``tempfile.gettempdir()/cbm-scratch``.

    An empty string in an optional field means "not given" (None), as an unset variable
    interpolated into a connection's extras gives "".
    """

    kind: str = "local"
    root: str = ""
    bucket: str | None = None
    endpoint_url: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str | None = None
    scratch_dir: str | None = None

    def __post_init__(self) -> None:
        # Connection extras set from unset environment variables arrive as "": same as not given.
        for name in _OPTIONAL_FIELDS:
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if self.kind not in _KINDS:
            raise ConfigError(f"store kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"store endpoint_url must look like https://host[:port], got {self.endpoint_url!r}"
                )
        if (self.access_key is None) != (self.secret_key is None):
            raise ConfigError("store access_key and secret_key must be given together or not at all")

    def scratch_root(self) -> Path:
        """Return the folder under which ``local_copy`` creates its per-call scratch folders."""
        return Path(self.scratch_dir) if self.scratch_dir else Path(tempfile.gettempdir()) / "cbm-scratch"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object (file) found by ``Store.iter_objects``.

    Attributes:
        uri: the object's URI (``s3://bucket/key`` or an absolute local path).
        size_bytes: its size.
        last_modified: modification time, timezone-aware UTC.
        etag: the S3 ETag (quotes removed); None for local files.
    """

    uri: str
    size_bytes: int
    last_modified: datetime
    etag: str | None = None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty (whole bucket).

    Raises:
        StoreError: ``uri`` is not of that form (the message quotes the accepted forms).
    """
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or " " in parts.netloc:
        raise StoreError(f"not an s3://bucket/key URI: {uri!r}; accepted: {ACCEPTED_URI_FORMS}")
    return parts.netloc, parts.path.lstrip("/")


def _file_uri_path(uri: str) -> Path:
    """Return the absolute path of a ``file://`` URI on this machine."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise StoreError(f"file URI must be file:///absolute/path, got {uri!r}; accepted: {ACCEPTED_URI_FORMS}")
    return Path(unquote(parts.path))


def _has_scheme(uri: str) -> bool:
    return "://" in uri


def is_remote(uri: str) -> bool:
    """Tell whether *uri* has a scheme other than ``file://`` (``s3://bucket/key``): not a local path.

    A relative path is not remote by this test; which store root it is relative to is the
    store's business (``Store.exists``, ``Store.gdal_path``), never the working directory's.
    """
    return _has_scheme(uri) and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    """Return the path named by a local URI: ``file:///x`` decoded, a plain path unchanged.

    Raises:
        StoreError: a remote URI, or a ``file://`` URI that is not ``file:///absolute/path``.
    """
    if uri.startswith("file://"):
        return _file_uri_path(uri)
    if _has_scheme(uri):
        raise StoreError(f"{uri!r} is not a local path; accepted: {ACCEPTED_URI_FORMS}")
    return Path(uri)


def check_byte_range(uri: str, start: int | None, end: int | None) -> None:
    """Raise ``StoreError`` unless ``[start, end)`` is a valid byte range (None = open end)."""
    if (start is not None and start < 0) or (end is not None and end < 0):
        raise StoreError(f"byte range of {uri}: offsets must be >= 0, got start={start} end={end}")
    if start is not None and end is not None and end < start:
        raise StoreError(f"byte range of {uri}: end must be >= start, got start={start} end={end}")


class Store(ABC):
    """Storage operations on product files; build one with ``open_store``.

    Ranges follow Python slices: ``read_bytes(uri, start=10, end=20)`` returns bytes 10..19.
    """

    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Return whether the object (or, for a URI ending in ``/``, any object under it) exists."""

    @abstractmethod
    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every object whose URI starts with ``prefix``, one page of ``page_size`` at a time."""

    @abstractmethod
    def read_bytes(self, uri: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Return the object's bytes ``[start, end)``; the whole object by default."""

    @abstractmethod
    def download(self, uri: str, dest: Path) -> Path:
        """Copy the object to ``dest`` (a file, or an existing folder); return the file written."""

    @abstractmethod
    def upload(self, path: Path, uri: str, *, replace: bool = True) -> None:
        """Store the local file ``path`` as ``uri``; ``replace=False`` refuses to overwrite."""

    @abstractmethod
    def local_copy(self, uri: str) -> AbstractContextManager[Path]:
        """Give a local path of the object (or prefix) for the duration of a ``with`` block."""

    @abstractmethod
    def gdal_path(self, uri: str) -> str:
        """Return the name GDAL/rasterio opens the object with (a path or ``/vsis3/bucket/key``)."""

    @abstractmethod
    def rasterio_env(self) -> dict[str, Any]:
        """Return the keywords of ``rasterio.Env(**options)``: GDAL options and, for S3, a session."""


class LocalStore(Store):
    """Product files in a local (or mounted network) folder.

    URIs are absolute paths, ``file:///`` URIs, or paths relative to ``StoreConfig.root``.
    """

    def resolve(self, uri: str) -> Path:
        """Return the absolute local path of ``uri``.

        Raises:
            StoreError: an ``s3://`` or other remote URI, a relative path without a root, or a
                relative path leaving the root.
        """
        if not uri:
            raise StoreError(f"empty URI; accepted: {ACCEPTED_URI_FORMS}")
        if uri.startswith("file://"):
            return _file_uri_path(uri)
        if _has_scheme(uri):
            raise StoreError(f"the local store cannot open {uri!r} (set kind='s3' for s3://); "
                             f"accepted: {ACCEPTED_URI_FORMS}")
        path = Path(uri)
        if path.is_absolute():
            return path
        if not self.cfg.root:
            raise StoreError(f"relative path {uri!r} needs StoreConfig.root; accepted: {ACCEPTED_URI_FORMS}")
        if ".." in path.parts:
            raise StoreError(f"relative path {uri!r} must stay inside the store root {self.cfg.root}")
        return Path(self.cfg.root).resolve() / path

    def exists(self, uri: str) -> bool:
        """Return whether the file or folder exists (``os.path.exists``)."""
        return self.resolve(uri).exists()

    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every file under the folder ``prefix``, or whose path starts with ``prefix``.

        Files are walked lazily in name order within each folder (``os.scandir``); ``page_size``
        is accepted for symmetry with the S3 store and has no effect.
        """
        path = self.resolve(prefix)
        if path.is_dir():
            yield from _walk(path)
            return
        parent, stem = path.parent, path.name
        if not parent.is_dir():
            return
        for entry in sorted(os.scandir(parent), key=lambda e: e.name):
            if not entry.name.startswith(stem):
                continue
            if entry.is_dir():
                yield from _walk(Path(entry.path))
            elif entry.is_file():
                yield _file_info(Path(entry.path))

    def read_bytes(self, uri: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Return bytes ``[start, end)`` of the file (``seek`` + ``read``).

        Raises:
            NotFoundError: no such file.
            StoreError: a bad range.
        """
        check_byte_range(uri, start, end)
        path = self.resolve(uri)
        try:
            with path.open("rb") as handle:
                handle.seek(start or 0)
                return handle.read() if end is None else handle.read(end - (start or 0))
        except FileNotFoundError as err:
            raise NotFoundError(f"no such file {path} (uri {uri})") from err
        except IsADirectoryError as err:
            raise StoreError(f"{path} is a folder, not a file (uri {uri})") from err

    def download(self, uri: str, dest: Path) -> Path:
        """Copy the file to ``dest`` (``shutil.copyfile``); return the file written.

        Raises:
            NotFoundError: no such file.
        """
        source = self.resolve(uri)
        if not source.is_file():
            raise NotFoundError(f"no such file {source} (uri {uri})")
        target = dest / source.name if dest.is_dir() else dest
        _copy_file(source, target)
        return target

    def upload(self, path: Path, uri: str, *, replace: bool = True) -> None:
        """Copy the local file ``path`` to ``uri``, creating folders as needed.

        Raises:
            NotFoundError: ``path`` is not a file.
            StoreError: ``replace`` is False and ``uri`` exists.
        """
        target = self.resolve(uri)
        if not path.is_file():
            raise NotFoundError(f"cannot upload {path}: no such file")
        if not replace and target.exists():
            raise StoreError(f"refusing to overwrite {uri}: it exists and replace=False")
        _copy_file(path, target)

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """Yield the file's own path: local files need no copy.

        Raises:
            NotFoundError: no such file or folder.
        """
        path = self.resolve(uri)
        if not path.exists():
            raise NotFoundError(f"no such file or folder {path} (uri {uri})")
        yield path

    def gdal_path(self, uri: str) -> str:
        """Return the plain local path."""
        return str(self.resolve(uri))

    def rasterio_env(self) -> dict[str, Any]:
        """Return no options: GDAL reads local files without configuration."""
        return {}


def _walk(folder: Path) -> Iterator[ObjectInfo]:
    # Sorted scandir keeps the order stable across runs without listing the whole tree first.
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield _file_info(Path(entry.path))


def _file_info(path: Path) -> ObjectInfo:
    stat = path.stat()
    return ObjectInfo(
        uri=str(path), size_bytes=stat.st_size, last_modified=datetime.fromtimestamp(stat.st_mtime, UTC)
    )


def _copy_file(source: Path, target: Path) -> None:
    """Copy through a temporary sibling and rename, so readers never see half a file."""
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    log.info("copied uri=%s to=%s bytes=%d seconds=%.3f", source, target, target.stat().st_size,
             time.perf_counter() - t0)


@contextmanager
def scratch_folder(cfg: StoreConfig) -> Iterator[Path]:
    """Yield a fresh folder under ``cfg.scratch_root()``; remove it afterwards, also on error."""
    root = cfg.scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="cbm-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        log.debug("removed scratch folder %s", folder)
