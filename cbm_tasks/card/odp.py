"""The ``cdse-odp`` backend: CARD products made by the Copernicus Data Space on-demand production service.

The service (OData, ``https://odp.dataspace.copernicus.eu/odata/v1``) runs JRC's SNAP graphs
remotely: CARD-BS (workflow ``card_bs``, no radiometric terrain flattening) and CARD-COH12
(``card_coh12_public``; it pairs the reference SLC itself). An order is

    POST ProductionOrder/OData.CSC.Order {"WorkflowName", "InputProductReference": {"Reference": "<name>.SAFE"},
                                          "Priority", "Name"}          -> {"value": {"Id", "Status", ...}}
    GET  ProductionOrders(<Id>)        -> Status queued | in_progress | completed | failed | cancelled
    GET  ProductionOrder(<Id>)/Product/$value                              -> the result (zip)

Orders take minutes to hours, so the DAG submits (:func:`submit_order`), then waits in an
Airflow trigger that polls :func:`order_status` without holding a worker slot, then fetches
the result (:func:`fetch_result`) and registers it like any backend's output. A refused order
(HTTP 4xx) or one the service reports ``failed``/``cancelled`` is bad input
(:class:`~cbm_tasks.card.errors.OrderRejectedError`); 429/5xx are transient.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import requests
from rasterio.errors import RasterioError

from cbm_tasks.card.backend import CardOutput
from cbm_tasks.card.cog import write_card_cog
from cbm_tasks.card.errors import OrderRejectedError
from cbm_tasks.card.grid import OutputGrid
from cbm_tasks.card.jobs import CardJob
from cbm_tasks.catalogue.http import RetryPolicy, request_json
from cbm_tasks.errors import CatalogueResponseError, ConfigError, TransientError

__all__ = ["DONE", "FAILED", "PENDING", "OdpConfig", "OdpOrder", "fetch_result", "order_status", "submit_order"]

log = logging.getLogger(__name__)

PENDING = ("queued", "in_progress")
DONE = "completed"
FAILED = ("failed", "cancelled")
_SUBMIT_RETRY = RetryPolicy()
# a status poll repeats anyway (the trigger asks again later): retry little
_STATUS_RETRY = RetryPolicy(max_attempts=2, max_total_s=30.0)


@dataclass(frozen=True, slots=True)
class OdpConfig:
    """The on-demand production service of a deployment (connection ``cbm_odp`` in ``dags/cbm_conn.py``).

    Attributes:
        url: OData root of the service.
        workflows: CARD type -> workflow name (the service lists them at ``/Workflows``).
        priority: order priority in the user's queue.
        poll_interval_s: how often the trigger asks for the status.
        timeout_s: give up on an order after this long (then the task fails and is retried).
    """

    url: str = "https://odp.dataspace.copernicus.eu/odata/v1"
    workflows: dict[str, str] = field(default_factory=lambda: {"CARD-BS": "card_bs", "CARD-COH12": "card_coh12_public"})
    priority: int = 1
    poll_interval_s: float = 60.0
    timeout_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")) or self.poll_interval_s <= 0 or self.timeout_s <= 0:
            raise ConfigError(f"ODP url must be http(s) and poll_interval_s, timeout_s > 0; got {self.url!r}, "
                              f"{self.poll_interval_s}, {self.timeout_s}")

    def workflow(self, card_type: str) -> str:
        """Return the workflow of *card_type*.

        Raises:
            ConfigError: the service makes no such product (CARD-COH6 is not offered).
        """
        if card_type not in self.workflows:
            raise ConfigError(f"the on-demand service makes {sorted(self.workflows)}, not {card_type}")
        return self.workflows[card_type]


@dataclass(frozen=True, slots=True)
class OdpOrder:
    """An order as the service reports it."""

    order_id: str
    status: str
    message: str | None = None
    estimated: str | None = None


def _order(body: Any, *, url: str) -> OdpOrder:
    value = body.get("value", body) if isinstance(body, dict) else None
    if not isinstance(value, dict) or not value.get("Id") or value.get("Status") not in (*PENDING, DONE, *FAILED):
        raise CatalogueResponseError(f"{url}: not a production order (needs Id and a known Status): {str(body)[:200]}")
    return OdpOrder(order_id=str(value["Id"]), status=str(value["Status"]), message=value.get("StatusMessage"),
                    estimated=value.get("EstimatedDate"))


def _call(session: requests.Session, url: str, *, policy: RetryPolicy, **kwargs: Any) -> Any:
    try:
        return request_json(session, url, policy=policy, **kwargs)
    except CatalogueResponseError as err:
        if " HTTP 401 " in str(err) or " HTTP 403 " in str(err):
            raise ConfigError(f"on-demand service refused the credentials: {err}") from err
        raise OrderRejectedError(str(err)) from err


def submit_order(session: requests.Session, cfg: OdpConfig, job: CardJob, *,
                 policy: RetryPolicy = _SUBMIT_RETRY) -> OdpOrder:
    """Submit the order of *job*; return it (normally ``queued``).

    Raises:
        ConfigError: the service does not make the job's type, or refuses the token.
        OrderRejectedError: the service refused the order (HTTP 4xx), naming its message.
        TransientError: 429/5xx or no answer, after the policy's retries.
    """
    url = f"{cfg.url.rstrip('/')}/ProductionOrder/OData.CSC.Order"
    body = {"WorkflowName": cfg.workflow(job.card_type),
            "InputProductReference": {"Reference": f"{job.source_names[0]}.SAFE"},
            "Priority": cfg.priority, "Name": job.key}
    order = _order(_call(session, url, method="POST", json_body=body, policy=policy), url=url)
    log.info("odp submitted job=%s order=%s status=%s estimated=%s", job.key, order.order_id, order.status,
             order.estimated)
    return order


def order_status(session: requests.Session, cfg: OdpConfig, order_id: str, *,
                 policy: RetryPolicy = _STATUS_RETRY) -> OdpOrder:
    """Return the order's current status.

    Raises:
        OrderRejectedError: the service failed or cancelled the order (its status message named),
            or does not know it.
        TransientError: 429/5xx or no answer.
    """
    url = f"{cfg.url.rstrip('/')}/ProductionOrders({order_id})"
    order = _order(_call(session, url, policy=policy), url=url)
    if order.status in FAILED:
        raise OrderRejectedError(f"on-demand order {order_id} {order.status}: {order.message or 'no message'}")
    return order


def fetch_result(session: requests.Session, cfg: OdpConfig, order_id: str, dest: Path, *,
                 timeout_s: float = 600.0) -> Path:
    """Download the result of a completed order to *dest* (a zip); return *dest*.

    Raises:
        TransientError: the download failed or was cut short (a retry may pass).
        OrderRejectedError: the service has no result for the order (HTTP 404).
    """
    url = f"{cfg.url.rstrip('/')}/ProductionOrder({order_id})/Product/$value"
    partial = dest.with_name(dest.name + ".part")
    try:
        with session.get(url, stream=True, timeout=timeout_s) as response:
            if response.status_code == 404:
                raise OrderRejectedError(f"GET {url}: HTTP 404: no result for order {order_id}")
            if response.status_code != 200:
                raise TransientError(f"GET {url}: HTTP {response.status_code} {response.reason}")
            expected = int(response.headers.get("Content-Length") or -1)
            with partial.open("wb") as out:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
    except (requests.RequestException, OSError) as err:
        partial.unlink(missing_ok=True)
        raise TransientError(f"GET {url}: {type(err).__name__}: {err}") from err
    if expected >= 0 and partial.stat().st_size != expected:
        size = partial.stat().st_size
        partial.unlink()
        raise TransientError(f"GET {url}: got {size} of {expected} bytes")
    partial.replace(dest)
    return dest


def result_to_card(archive: Path, job: CardJob, scratch: Path, *, order_id: str) -> CardOutput:
    """Turn a downloaded result (zip of GeoTIFFs, one per polarisation or one multi-band) into a CARD COG.

    Raises:
        OrderRejectedError: the archive is no zip or holds no readable GeoTIFF.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = sorted(name for name in zipped.namelist() if name.lower().endswith((".tif", ".tiff")))
            zipped.extractall(scratch / "odp", members=members)
    except (zipfile.BadZipFile, OSError) as err:
        raise OrderRejectedError(f"order {order_id}: result {archive.name} is not a readable zip: {err}") from err
    if not members:
        raise OrderRejectedError(f"order {order_id}: result {archive.name} holds no GeoTIFF")
    bands: dict[str, np.ndarray] = {}
    grid: OutputGrid | None = None
    try:
        for member in members:
            with rasterio.open(scratch / "odp" / member) as src:
                t = src.transform
                this = OutputGrid(epsg=int(src.crs.to_epsg()), resolution_m=float(t.a), left=t.c, top=t.f,
                                  width=src.width, height=src.height)
                if grid is not None and this != grid:
                    raise OrderRejectedError(f"order {order_id}: {member} is on another grid than the first file")
                grid = this
                for index in range(1, src.count + 1):
                    name = _band_name(member, src.descriptions[index - 1], index, src.count)
                    values = src.read(index).astype(np.float32)
                    if src.nodata is not None and not np.isnan(src.nodata):
                        values[values == src.nodata] = np.nan
                    bands[name] = values
    except (RasterioError, TypeError) as err:
        raise OrderRejectedError(f"order {order_id}: cannot read the result's GeoTIFFs: {err}") from err
    assert grid is not None
    # co-polarisation first, as every other CARD product (file order of a zip is arbitrary)
    rank = {name: position for position, name in enumerate(("VV", "VH", "HH", "HV"))}
    bands = dict(sorted(bands.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))
    path = write_card_cog(scratch / f"{job.card_type}_{job.source_names[0]}.tif", bands, grid=grid,
                          acquired_at=job.acquired_at,
                          tags={"CARD_TYPE": job.card_type, "SOURCE_PRODUCTS": ",".join(job.source_names),
                                "BACKEND": f"CDSE on-demand production, order {order_id}", "AOI": job.aoi})
    return CardOutput(path=path, bands=tuple(bands), epsg=grid.epsg, resolution_m=grid.resolution_m,
                      footprint_wkt=job.footprint_wkt, lineage={"backend": "cdse-odp", "order": order_id})


def _band_name(member: str, description: str | None, index: int, count: int) -> str:
    upper = Path(member).stem.upper()
    for polarisation in ("VV", "VH", "HH", "HV"):
        if count == 1 and polarisation in upper.replace("-", "_").split("_"):
            return polarisation
    return description or f"{Path(member).stem}_b{index}"


class OdpResultBackend:
    """The backend step of an order that is done: fetch its result and make the CARD COG.

    Used with :func:`cbm_tasks.pipeline.card.process` after the trigger reported ``completed``,
    so the result goes into the store and the catalogue exactly like a local backend's.
    """

    name = "cdse-odp"
    local_sources = False  # the service read the sources; nothing to copy here

    def __init__(self, session: requests.Session, cfg: OdpConfig, order_id: str) -> None:
        self.session, self.cfg, self.order_id = session, cfg, order_id

    def supports(self, card_type: str) -> bool:
        """Return whether the service makes *card_type*."""
        return card_type in self.cfg.workflows

    def make(self, job: CardJob, sources: list[tuple[Any, Path]], scratch: Path) -> CardOutput:
        """Fetch the order's result into *scratch* and rewrite it as a CARD COG."""
        archive = fetch_result(self.session, self.cfg, self.order_id, scratch / f"odp_{self.order_id}.zip")
        output = result_to_card(archive, job, scratch, order_id=self.order_id)
        lineage = {**output.lineage, "workflow": self.cfg.workflow(job.card_type), "service": self.cfg.url}
        return CardOutput(path=output.path, bands=output.bands, epsg=output.epsg, resolution_m=output.resolution_m,
                          footprint_wkt=output.footprint_wkt, lineage=lineage)
