"""cbm_catalogue: poll the image catalogue for every AOI and register the new products."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cbm_common import ALL_AOIS, AOI_PARAM_PATTERN, READY_PRODUCTS, S1_PRODUCTS, default_args, fail_on_bad_input

log = logging.getLogger(__name__)

# Bounded: a catalogue that stays down fails its AOI's poll within about an hour (3 tries of at
# most 20 min, 2 waits of at most 10 min), and only that AOI's; the other AOIs' polls, and
# manual runs (max_active_runs > 1), never wait for it.
DEFAULT_ARGS = default_args(retries=2, retry_delay=timedelta(minutes=2), max_retry_delay=timedelta(minutes=10),
                            execution_timeout=timedelta(minutes=20))
# A scheduled poll of every AOI plus manual runs for single AOIs (the demo's) side by side;
# registration is idempotent, so overlapping runs are safe.
MAX_ACTIVE_RUNS = 4


def _day(value: str | None, *, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    except ValueError as err:
        raise AirflowFailException(f"param {name} must be a date YYYY-MM-DD, got {value!r}") from err


@dag(
    dag_id="cbm_catalogue",
    schedule="0 */6 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=MAX_ACTIVE_RUNS,
    tags=["cbm", "catalogue"],
    default_args=DEFAULT_ARGS,
    params={
        "aoi": Param(ALL_AOIS, type="string", pattern=AOI_PARAM_PATTERN,
                     description="AOI to poll; * = every AOI with a parcel set"),
        "start": Param(None, type=["null", "string"], format="date",
                       description="first sensing day (UTC); empty = end - lookback_days"),
        "end": Param(None, type=["null", "string"], format="date",
                     description="last sensing day (UTC, included); empty = the run's time"),
        "lookback_days": Param(30, type="integer", minimum=1, maximum=3660,
                               description="window length when start is empty"),
        "product_types": Param(["S2MSI2A", "IW_GRDH_1S", "CARD-BS"], type="array", items={"type": "string"},
                               description="product types to search for"),
        "max_items": Param(None, type=["null", "integer"], minimum=1,
                           description="cap on products read per product type (tests, trials)"),
    },
)
def cbm_catalogue() -> None:
    """Search the catalogue over each AOI's parcels in a date window and register what is new.

    Runs every 6 hours over the last `lookback_days` (registration is idempotent, so windows
    overlap safely), or on demand with an explicit window. New Sentinel-2 L2A and CARD
    products enter as `ready`; raw Sentinel-1 products enter as `new` for the CARD processing.
    When products are ready to extract, the `cbm_ready_products` asset is updated with the AOIs
    concerned, which starts `cbm_extract`.

    Each AOI is polled in its own mapped task. In a run over every AOI (`aoi` = `*`, the
    schedule) an AOI whose catalogue is unreachable is recorded as in back-off and the run moves
    on: the others are announced at once and the next scheduled run tries it again; `check`
    then fails the run, naming it. A run for one AOI retries its poll (bounded, see
    DEFAULT_ARGS). Manual runs never queue behind a scheduled one (`max_active_runs` > 1).
    """

    @task
    def select_aois() -> list[str]:
        from cbm_conn import postgis_dsn

        from cbm_tasks import aoi as aoi_lookup
        from cbm_tasks import db

        aoi = str(get_current_context()["params"]["aoi"])
        if aoi != ALL_AOIS:
            return [aoi]
        with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_catalogue") as conn:
            return aoi_lookup.list_aois(conn)

    @task(map_index_template="{{ cbm_aoi }}")
    def poll(aoi: str) -> dict[str, Any]:
        from cbm_conn import catalogue_config, postgis_dsn
        from cbm_lineage import report_lineage, tables

        from cbm_tasks import db
        from cbm_tasks.catalogue.clients import open_catalogue
        from cbm_tasks.errors import TransientError
        from cbm_tasks.pipeline import poll as pipeline
        from cbm_tasks.report.datasets import location_uri

        context = get_current_context()
        context["cbm_aoi"] = aoi  # type: ignore[typeddict-unknown-key]  # names the mapped task in the UI
        params = context["params"]
        end_day = _day(params["end"], name="end")
        end = end_day + timedelta(days=1) if end_day else context["dag_run"].run_after.astimezone(UTC)
        start = _day(params["start"], name="start") or end - timedelta(days=int(params["lookback_days"]))
        try:
            with fail_on_bad_input(f"aoi {aoi}", also=(ValueError,)):  # bad AOI, window or answer
                config = catalogue_config(aoi)
                # OpenLineage: a local catalogue is a folder (a remote one has no scheme Airflow converts)
                report_lineage(inputs=[location_uri(config.root)] if config.kind == "local" and config.root else [],
                               outputs=tables("cbm.product", "cbm.product_status"))
                catalogue = open_catalogue(config)
                with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_catalogue") as conn:
                    result = pipeline.poll_aoi(conn, catalogue, aoi=aoi, start=start, end=end,
                                               product_types=params["product_types"], max_items=params["max_items"])
        except TransientError as err:
            if params["aoi"] != ALL_AOIS:
                raise  # a run for this AOI: Airflow retries it
            # a poll of every AOI does not hold the others back: the next scheduled run tries again
            log.warning("aoi=%s catalogue unavailable, in back-off until the next run: %s", aoi, err)
            return {"aoi": aoi, "found": 0, "new": 0, "new_ready": 0, "ready_waiting": 0, "backoff": str(err)}
        return result.as_dict()

    @task(outlets=[READY_PRODUCTS], trigger_rule="all_done")
    def announce(results: list[dict[str, Any]]) -> dict[str, Any]:
        # all_done: an AOI whose poll failed has no result; the others are announced all the same
        results = list(results)
        totals = {key: sum(int(r[key]) for r in results) for key in ("found", "new", "new_ready", "ready_waiting")}
        waiting = sorted(r["aoi"] for r in results if r["ready_waiting"] > 0)
        if not waiting:
            # a skipped task emits no asset event: cbm_extract is not started for nothing
            raise AirflowSkipException(f"nothing ready to extract: {totals}")
        get_current_context()["outlet_events"][READY_PRODUCTS].extra = {"aois": waiting, **totals}
        return {"aois": waiting, **totals}

    @task(outlets=[S1_PRODUCTS], trigger_rule="all_done")
    def announce_s1(results: list[dict[str, Any]]) -> dict[str, Any]:
        # new products that are not ready are raw Sentinel-1: cbm_s1_card makes their CARD products;
        # all_done: an AOI whose poll failed or is in back-off has no new products to announce
        results = list(results)
        aois = sorted(r["aoi"] for r in results if int(r["new"]) > int(r["new_ready"]))
        if not aois:
            raise AirflowSkipException("no new raw Sentinel-1 product")
        get_current_context()["outlet_events"][S1_PRODUCTS].extra = {"aois": aois}
        return {"aois": aois}

    @task(trigger_rule="all_done")
    def check(aois: list[str], results: list[dict[str, Any]]) -> None:
        # the leaf that fails the run when an AOI could not be polled, after the others were announced
        results = list(results)
        backoff = sorted(r["aoi"] for r in results if r.get("backoff"))
        failed = sorted(set(aois) - {r["aoi"] for r in results})
        if backoff or failed:
            raise AirflowFailException(f"AOIs not polled: in back-off (catalogue unavailable) {backoff or 'none'}, "
                                       f"failed {failed or 'none'}; see their poll logs")

    aois = select_aois()
    results = poll.expand(aoi=aois)
    announce(results)
    announce_s1(results)
    check(aois, results)


cbm_catalogue()
