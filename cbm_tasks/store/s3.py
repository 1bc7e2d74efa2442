"""The S3-protocol store: CDSE ``eodata``, MinIO, Ceph or AWS through one boto3 client.

Every boto3 call is wrapped where it is made, and its errors are translated into ours:
404 / NoSuchKey -> ``NotFoundError`` (naming bucket and key); throttling, 5xx and lost
connections -> ``TransientError`` (Airflow retries the task); access denied and everything
else -> ``StoreError``. botocore itself already retries transient failures ("standard" mode)
before we see them.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from cbm_tasks.errors import CbmError, NotFoundError, StoreError, TransientError
from cbm_tasks.store.base import (
    ACCEPTED_URI_FORMS,
    LocalStore,
    ObjectInfo,
    Store,
    StoreConfig,
    check_byte_range,
    scratch_folder,
    split_s3_uri,
)

__all__ = ["S3Store", "make_client"]

log = logging.getLogger(__name__)

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "RequestTimeout", "InternalError", "ServiceUnavailable", "BadGateway", "GatewayTimeout",
})
_DENIED_CODES = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
# Two cores are shared by every task on a worker: a few parallel parts are enough.
_TRANSFER = TransferConfig(max_concurrency=4, multipart_threshold=64 * 1024 * 1024)
# GDAL opens only these through /vsis3/; others fail fast instead of costing HTTP probes.
# (.img/.hdr/.dim: SNAP's BEAM-DIMAP output of the CARD processing; .ovr: external overviews.)
_GDAL_EXTENSIONS = ".tif,.tiff,.jp2,.xml,.vrt,.nc,.json,.safe,.img,.hdr,.dim,.ovr"


def make_client(cfg: StoreConfig) -> Any:
    """Return a boto3 S3 client for ``cfg`` (``boto3.session.Session.client("s3")``).

    Custom endpoints (CDSE, MinIO) get path-style addressing, since their buckets have no DNS
    names of their own. Checksums are sent only when required: CDSE and older S3-compatible
    servers reject the CRC32 trailers boto3 adds by default.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=10,
        s3={"addressing_style": "path" if cfg.endpoint_url else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of its own: the module-level default session is shared between threads.
    session = boto3.session.Session(
        aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key, region_name=cfg.region
    )
    return session.client("s3", endpoint_url=cfg.endpoint_url, config=config)


def _translate(err: Exception, *, action: str, bucket: str, key: str) -> CbmError:
    """Return our exception for a boto3/botocore failure of ``action`` on ``bucket``/``key``."""
    where = f"s3://{bucket}/{key}"
    if isinstance(err, S3UploadFailedError) and isinstance(err.__context__, ClientError | BotoCoreError):
        err = err.__context__  # s3transfer wraps the real ClientError; translate that
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = err.response.get("Error", {}).get("Message", "") or str(err)
        if code == "NoSuchBucket":
            return NotFoundError(f"{action}: no bucket {bucket!r} (key {key!r})")
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError(f"{action}: no object {key!r} in bucket {bucket!r}")
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientError(f"{action} {where}: HTTP {status} {code}: {message}")
        if code in _DENIED_CODES or status == 403:
            return StoreError(
                f"{action} {where}: access denied (HTTP {status} {code}); "
                "check the credentials and bucket policy of the cbm_store connection"
            )
        return StoreError(f"{action} {where}: HTTP {status} {code}: {message}")
    if isinstance(err, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return TransientError(f"{action} {where}: {err}")
    if isinstance(err, NoCredentialsError):
        return StoreError(f"{action} {where}: no S3 credentials (set login/password of the cbm_store connection)")
    return StoreError(f"{action} {where}: {err}")


_BOTO_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)


class S3Store(Store):
    """Product files in an S3-protocol object store.

    URIs are ``s3://bucket/key``, keys relative to ``StoreConfig.root`` in
    ``StoreConfig.bucket``, or local paths (absolute or ``file:///``), which are served from
    disk as the local store does, so a site may keep some products on a mounted volume.
    """

    def __init__(self, cfg: StoreConfig, *, client: Any = None) -> None:
        """Open the store; ``client`` replaces the boto3 client built from ``cfg`` (tests, proxies)."""
        super().__init__(cfg)
        self._client = client if client is not None else make_client(cfg)
        self._local = LocalStore(StoreConfig(kind="local", scratch_dir=cfg.scratch_dir))

    def locate(self, uri: str) -> tuple[str, str] | Path:
        """Return ``(bucket, key)`` of an S3 URI or relative key, or the ``Path`` of a local one.

        Raises:
            StoreError: an unsupported scheme, or a relative key without ``StoreConfig.bucket``.
        """
        if not uri:
            raise StoreError(f"empty URI; accepted: {ACCEPTED_URI_FORMS}")
        if uri.startswith("s3://"):
            return split_s3_uri(uri)
        if uri.startswith("file://") or uri.startswith("/"):
            return self._local.resolve(uri)
        if "://" in uri:
            raise StoreError(f"unsupported URI {uri!r}; accepted: {ACCEPTED_URI_FORMS}")
        if not self.cfg.bucket:
            raise StoreError(f"relative key {uri!r} needs StoreConfig.bucket; accepted: {ACCEPTED_URI_FORMS}")
        if ".." in PurePosixPath(uri).parts:
            raise StoreError(f"relative key {uri!r} must stay under the store root {self.cfg.root!r}")
        root = self.cfg.root.strip("/")
        return self.cfg.bucket, posixpath.join(root, uri) if root else uri

    def _object(self, uri: str) -> tuple[str, str] | Path:
        """Like ``locate``, but an S3 location must name one object, not a prefix."""
        loc = self.locate(uri)
        if isinstance(loc, tuple) and (not loc[1] or loc[1].endswith("/")):
            raise StoreError(f"{uri!r} names a prefix, not an object; use local_copy or iter_objects for a folder")
        return loc

    def exists(self, uri: str) -> bool:
        """Return whether the object exists (``head_object``).

        For a prefix ending in ``/``: whether any object is under it (``list_objects_v2``, ``MaxKeys=1``).
        """
        loc = self.locate(uri)
        if isinstance(loc, Path):
            return loc.exists()
        bucket, key = loc
        try:
            if not key or key.endswith("/"):
                page = self._client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
                return int(page.get("KeyCount", 0)) > 0
            self._client.head_object(Bucket=bucket, Key=key)
        except _BOTO_ERRORS as err:
            translated = _translate(err, action="exists", bucket=bucket, key=key)
            if isinstance(translated, NotFoundError):
                return False
            raise translated from err
        return True

    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (``list_objects_v2`` paginator).

        One page of at most ``page_size`` keys (1..1000) is held at a time. Folder markers
        (zero-byte keys ending in ``/``) are skipped.
        """
        if not 1 <= page_size <= 1000:
            raise StoreError(f"page_size must be within 1..1000, got {page_size}")
        loc = self.locate(prefix)
        if isinstance(loc, Path):
            yield from self._local.iter_objects(str(loc))
            return
        bucket, key = loc
        t0, n_objects, n_pages = time.perf_counter(), 0, 0
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=key, PaginationConfig={"PageSize": page_size}):
                n_pages += 1
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue
                    n_objects += 1
                    yield ObjectInfo(
                        uri=f"s3://{bucket}/{obj['Key']}",
                        size_bytes=int(obj["Size"]),
                        last_modified=obj["LastModified"],
                        etag=str(obj.get("ETag", "")).strip('"') or None,
                    )
        except _BOTO_ERRORS as err:
            raise _translate(err, action="list", bucket=bucket, key=key) from err
        log.info("listed prefix=s3://%s/%s objects=%d pages=%d seconds=%.3f",
                 bucket, key, n_objects, n_pages, time.perf_counter() - t0)

    def read_bytes(self, uri: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Return bytes ``[start, end)`` of the object (``get_object`` with a ``Range`` header).

        A range starting past the end of the object gives ``b""``, as reading a file does.

        Raises:
            NotFoundError: no such bucket or key.
            StoreError: a bad range or URI, access denied.
            TransientError: throttling, 5xx, lost connection.
        """
        loc = self._object(uri)
        if isinstance(loc, Path):
            return self._local.read_bytes(str(loc), start=start, end=end)
        check_byte_range(uri, start, end)
        if end is not None and end == (start or 0):
            return b""
        bucket, key = loc
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start is not None or end is not None:
            request["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        t0 = time.perf_counter()
        try:
            response = self._client.get_object(**request)
            body = response["Body"]
            try:
                payload: bytes = body.read()
            finally:
                body.close()
        except _BOTO_ERRORS as err:
            if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise _translate(err, action="read", bucket=bucket, key=key) from err
        log.info("read uri=s3://%s/%s range=%s bytes=%d seconds=%.3f",
                 bucket, key, request.get("Range", "all"), len(payload), time.perf_counter() - t0)
        return payload

    def download(self, uri: str, dest: Path) -> Path:
        """Copy the object to ``dest`` (``download_file``, multipart for large objects).

        ``dest`` is the file to write, or an existing folder (the key's last part is the name).

        Raises:
            NotFoundError: no such bucket or key.
            TransientError: throttling, 5xx, lost connection.
        """
        loc = self._object(uri)
        if isinstance(loc, Path):
            return self._local.download(str(loc), dest)
        bucket, key = loc
        target = dest / PurePosixPath(key).name if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            self._client.download_file(bucket, key, str(target), Config=_TRANSFER)
        except _BOTO_ERRORS as err:
            raise _translate(err, action="download", bucket=bucket, key=key) from err
        log.info("downloaded uri=s3://%s/%s bytes=%d seconds=%.3f",
                 bucket, key, target.stat().st_size, time.perf_counter() - t0)
        return target

    def upload(self, path: Path, uri: str, *, replace: bool = True) -> None:
        """Store the local file ``path`` as ``uri`` (``upload_file``, multipart for large files).

        With ``replace=False`` an existing object is never overwritten (checked with
        ``head_object`` first; two writers racing on one key are not detected).

        Raises:
            NotFoundError: ``path`` is not a file.
            StoreError: ``replace`` is False and the object exists; access denied.
            TransientError: throttling, 5xx, lost connection.
        """
        loc = self._object(uri)
        if isinstance(loc, Path):
            self._local.upload(path, str(loc), replace=replace)
            return
        if not path.is_file():
            raise NotFoundError(f"cannot upload {path}: no such file")
        bucket, key = loc
        if not replace and self.exists(f"s3://{bucket}/{key}"):
            raise StoreError(f"refusing to overwrite s3://{bucket}/{key}: it exists and replace=False")
        t0 = time.perf_counter()
        try:
            self._client.upload_file(str(path), bucket, key, Config=_TRANSFER)
        except _BOTO_ERRORS as err:
            raise _translate(err, action="upload", bucket=bucket, key=key) from err
        log.info("uploaded uri=s3://%s/%s bytes=%d seconds=%.3f",
                 bucket, key, path.stat().st_size, time.perf_counter() - t0)

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """Yield a local copy of the object, or of every object under a prefix ending in ``/``.

        The copy goes to a fresh scratch folder under ``StoreConfig.scratch_root()``; a prefix
        (a SAFE folder) becomes a folder named as its last part. The scratch folder is removed
        afterwards, also when the ``with`` body raises.

        Raises:
            NotFoundError: no such object, or no object under the prefix.
        """
        loc = self.locate(uri)
        if isinstance(loc, Path):
            with self._local.local_copy(str(loc)) as path:
                yield path
            return
        bucket, key = loc
        with scratch_folder(self.cfg) as scratch:
            if key and not key.endswith("/"):
                yield self.download(f"s3://{bucket}/{key}", scratch / PurePosixPath(key).name)
                return
            folder = scratch / (PurePosixPath(key).name or bucket)
            t0, n_files, n_bytes = time.perf_counter(), 0, 0
            for obj in self.iter_objects(f"s3://{bucket}/{key}"):
                relative = PurePosixPath(obj.uri.removeprefix(f"s3://{bucket}/{key}"))
                if relative.is_absolute() or ".." in relative.parts:
                    raise StoreError(f"key {obj.uri} would be written outside the scratch folder {folder}")
                self.download(obj.uri, folder.joinpath(*relative.parts))
                n_files, n_bytes = n_files + 1, n_bytes + obj.size_bytes
            if n_files == 0:
                raise NotFoundError(f"local copy: no object under prefix {key!r} in bucket {bucket!r}")
            log.info("copied prefix=s3://%s/%s files=%d bytes=%d seconds=%.3f",
                     bucket, key, n_files, n_bytes, time.perf_counter() - t0)
            yield folder

    def gdal_path(self, uri: str) -> str:
        """Return ``/vsis3/bucket/key`` (or the local path), for ``rasterio.open``."""
        loc = self.locate(uri)
        if isinstance(loc, Path):
            return str(loc)
        return f"/vsis3/{loc[0]}/{loc[1]}"

    def rasterio_env(self) -> dict[str, Any]:
        """Return the ``rasterio.Env(**options)`` keywords for reading ``/vsis3/`` paths of this store.

        GDAL options are strings (``AWS_S3_ENDPOINT`` as host:port, ``AWS_HTTPS``,
        ``AWS_VIRTUAL_HOSTING``, ``AWS_REGION``, ...). The credentials travel in ``session``, a
        ``rasterio.session.AWSSession``: rasterio refuses ``AWS_ACCESS_KEY_ID`` and
        ``AWS_SECRET_ACCESS_KEY`` as plain options and sets them itself from the session. With no
        credentials in the config, the session uses boto3's default chain, as the client does.
        """
        from rasterio.session import AWSSession  # noqa: PLC0415 - rasterio only when rasters are read

        options: dict[str, Any] = {
            # Without this GDAL lists the whole "folder" of every file it opens, to find sidecars.
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": _GDAL_EXTENSIONS,
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
            "GDAL_HTTP_MAX_RETRY": "4",
            "GDAL_HTTP_RETRY_DELAY": "1",
            "VSI_CACHE": "TRUE",
        }
        endpoint: str | None = None
        if self.cfg.endpoint_url:
            parts = urlsplit(self.cfg.endpoint_url)
            endpoint = parts.netloc  # GDAL wants host[:port], without the scheme
            options["AWS_S3_ENDPOINT"] = endpoint
            options["AWS_HTTPS"] = "YES" if parts.scheme == "https" else "NO"
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # path-style, as the boto3 client
        if self.cfg.region:
            options["AWS_REGION"] = self.cfg.region
        options["session"] = AWSSession(
            aws_access_key_id=self.cfg.access_key,
            aws_secret_access_key=self.cfg.secret_key,
            region_name=self.cfg.region,
            endpoint_url=endpoint,
        )
        return options
