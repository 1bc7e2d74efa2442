"""Object store: one interface over a local folder and an S3-protocol bucket.

``open_store(cfg)`` gives a :class:`LocalStore` (``base``) or an ``S3Store`` (``s3``, which
imports boto3, so it is loaded only when asked for). See ``base`` for the URIs understood.
"""

from __future__ import annotations

from cbm_tasks.store.base import (
    ACCEPTED_URI_FORMS,
    LocalStore,
    ObjectInfo,
    Store,
    StoreConfig,
    check_byte_range,
    is_remote,
    local_path,
    scratch_folder,
    split_s3_uri,
)

__all__ = [
    "ACCEPTED_URI_FORMS",
    "LocalStore",
    "ObjectInfo",
    "Store",
    "StoreConfig",
    "check_byte_range",
    "is_remote",
    "local_path",
    "open_store",
    "scratch_folder",
    "split_s3_uri",
]


def open_store(cfg: StoreConfig) -> Store:
    """Return the store described by ``cfg``: a ``LocalStore`` or an ``S3Store``.

    The S3 store (and boto3) is imported only when asked for, so DAG parsing and local runs do
    not pay for it.
    """
    if cfg.kind == "s3":
        from cbm_tasks.store.s3 import S3Store  # noqa: PLC0415 - boto3 is heavy; load on demand

        return S3Store(cfg)
    return LocalStore(cfg)
