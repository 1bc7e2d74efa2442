"""Build a catalogue client from one frozen configuration value.

``dags/cbm_conn.py`` turns the Airflow connection into a :class:`CatalogueConfig` (an unknown
key raises ``TypeError`` there, not later); tasks call :func:`open_catalogue` with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from cbm_tasks.catalogue.http import RetryPolicy, Sleep, make_session
from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.catalogue.odata import CDSE_ODATA_URL, CdseODataCatalogue
from cbm_tasks.catalogue.query import Catalogue
from cbm_tasks.catalogue.stac import CDSE_STAC_URL, CdseStacCatalogue
from cbm_tasks.errors import ConfigError

__all__ = ["KINDS", "CatalogueConfig", "open_catalogue"]

KINDS = ("cdse-odata", "cdse-stac", "local")


@dataclass(frozen=True, slots=True)
class CatalogueConfig:
    """Which catalogue to search and how.

    Attributes:
        kind: ``cdse-odata`` (default), ``cdse-stac`` or ``local``.
        url: service URL; None = the CDSE default of the kind (OData ``.../odata/v1/Products``,
            STAC ``https://stac.dataspace.copernicus.eu/v1``). Unused for ``local``.
        page_size: products per page (OData 1..1000, STAC 1..10000).
        root: folder of the local catalogue (``local`` only).
        stac_collections: product type -> STAC collection id (None = CDSE's).
        max_attempts, max_total_s, timeout_s: retry policy of every request (see
            :class:`cbm_tasks.catalogue.http.RetryPolicy`).
        bearer_token: optional access token sent as ``Authorization: Bearer``; not in repr.

    Raises:
        ConfigError: unknown kind, ``local`` without root, page size out of range.
    """

    kind: str = "cdse-odata"
    url: str | None = None
    page_size: int = 100
    root: str | None = None
    stac_collections: dict[str, str] | None = None
    max_attempts: int = 5
    max_total_s: float = 300.0
    timeout_s: float = 60.0
    bearer_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"catalogue kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "local" and not self.root:
            raise ConfigError("catalogue kind 'local' needs root (the folder of the item files)")
        limit = 1000 if self.kind == "cdse-odata" else 10_000
        if not 1 <= self.page_size <= limit:
            raise ConfigError(f"catalogue page_size must be within 1..{limit} for {self.kind}, got {self.page_size}")

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy these settings describe."""
        return RetryPolicy(max_attempts=self.max_attempts, max_total_s=self.max_total_s, timeout_s=self.timeout_s)


def open_catalogue(
    cfg: CatalogueConfig, *, session: requests.Session | None = None, sleep: Sleep = time.sleep
) -> Catalogue:
    """Return the client ``cfg`` describes; nothing is sent until its ``search`` is iterated.

    Args:
        cfg: the settings.
        session: HTTP session to use (tests pass one); None = a new one from
            :func:`cbm_tasks.catalogue.http.make_session`.
        sleep: how to wait between retries.

    Returns:
        A :class:`cbm_tasks.catalogue.query.Catalogue`.

    Raises:
        ConfigError: the local root is not a directory, or the URL is not http(s).
    """
    if cfg.kind == "local":
        return LocalCatalogue(str(cfg.root))
    http = session if session is not None else make_session(bearer_token=cfg.bearer_token)
    try:
        if cfg.kind == "cdse-stac":
            return CdseStacCatalogue(
                http,
                url=cfg.url or CDSE_STAC_URL,
                page_size=cfg.page_size,
                collections=cfg.stac_collections,
                retry=cfg.retry,
                sleep=sleep,
            )
        return CdseODataCatalogue(
            http, base_url=cfg.url or CDSE_ODATA_URL, page_size=cfg.page_size, retry=cfg.retry, sleep=sleep
        )
    except ValueError as err:
        raise ConfigError(f"catalogue {cfg.kind}: {err}") from err
