"""One exception hierarchy for the whole library.

``BadInputError`` means a retry cannot help (broken geometry, corrupt raster, malformed
catalogue answer, an object store refusing access); DAG tasks turn it into ``AirflowFailException``. ``TransientError``
means the same call may succeed later (HTTP 429/5xx, lost database connection) and is
left to Airflow's retries.
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "BandError",
    "CatalogueResponseError",
    "CbmError",
    "ClaimLostError",
    "ClusterError",
    "ConfigError",
    "CorruptProductError",
    "GeometryError",
    "GridMismatchError",
    "IdLimitError",
    "MigrationError",
    "NotFoundError",
    "ParcelImportError",
    "ParcelSetChangedError",
    "ProductNotFoundError",
    "ServiceError",
    "SnapError",
    "StoreError",
    "TransientError",
]


class CbmError(Exception):
    """Base class of every error raised by cbm_tasks."""


class BadInputError(CbmError):
    """The input itself is wrong; retrying the same call gives the same error."""


class TransientError(CbmError):
    """A service failed in a way that may pass (timeout, 429, 5xx, lost connection)."""


class ParcelSetChangedError(TransientError):
    """An import committed a new parcel-set version after the rows were computed from the old one."""


class ConfigError(BadInputError):
    """A setting is missing or has an invalid value."""


class BandError(BadInputError):
    """A raster band is missing, has the wrong shape or dtype, or cannot be decoded."""


class GridMismatchError(BandError):
    """Two arrays that must share a pixel grid do not."""


class GeometryError(BadInputError):
    """A parcel or footprint geometry is empty, invalid or of the wrong type."""


class ParcelImportError(BadInputError):
    """A parcel file cannot be imported as a whole (missing column, no CRS, duplicate ids, ...)."""


class CorruptProductError(BadInputError):
    """A product file exists but cannot be read (truncated, wrong format, no georeferencing)."""


class CatalogueResponseError(BadInputError):
    """A catalogue answered with something that is not a valid product listing."""


class NotFoundError(BadInputError):
    """A named object (AOI, parcel set, product, key) does not exist."""


class ProductNotFoundError(NotFoundError):
    """No catalogue record for the given product."""


class ClaimLostError(BadInputError):
    """The product is no longer this run's to work on (another run took it over, or it was finished or reset).

    A retry of the same task cannot get it back; the product itself is not bad and is not marked failed.
    """


class StoreError(BadInputError):
    """An object-store request a retry cannot fix: access denied, no credentials, a bad URI, a refused overwrite."""


class IdLimitError(CbmError):
    """An id sequence has reached the largest value of its column type; nothing more can be created."""


class MigrationError(CbmError):
    """A schema migration failed or the migration history is inconsistent."""


class ClusterError(CbmError):
    """The project-local PostgreSQL cluster cannot be created, started or stopped."""


class SnapError(CbmError):
    """ESA SNAP gpt failed on a graph."""


class ServiceError(CbmError):
    """A local service (an Airflow component) cannot be started, reached or stopped."""
