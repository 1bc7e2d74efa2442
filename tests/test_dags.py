"""Every DAG in dags/ imports cleanly and is wired as documented (ids, tasks, params, schedule, retries)."""

from __future__ import annotations

from datetime import timedelta

import airflow_testenv
import pytest

CFG = airflow_testenv.activate()  # before any airflow import

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk import Asset  # noqa: E402


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(CFG.project / "dags"))


def test_no_import_errors_and_expected_dags(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert {"cbm_catalogue", "cbm_extract", "cbm_markers", "cbm_audit"} <= set(dagbag.dag_ids)
    # cbm_conn.py is a helper, not a DAG file
    assert all(not dag.fileloc.endswith("cbm_conn.py") for dag in dagbag.dags.values())


@pytest.mark.parametrize("dag_id", ["cbm_catalogue", "cbm_extract", "cbm_markers", "cbm_audit"])
def test_every_task_retries_with_backoff_and_a_timeout(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag is not None
    assert dag.catchup is False
    assert "cbm" in dag.tags
    assert dag.doc_md and "cbm_" in dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.retry_delay >= timedelta(minutes=1), task.task_id
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(minutes=30), task.task_id


def test_catalogue_dag(dagbag: DagBag) -> None:
    dag = dagbag.dags["cbm_catalogue"]
    assert set(dag.task_ids) == {"select_aois", "poll", "announce", "announce_s1", "check"}
    # a manual run for one AOI never queues behind a scheduled poll of every AOI
    assert dag.max_active_runs > 1
    # one AOI's dead catalogue gives up within about an hour: every try times out, the waits are capped
    poll = dag.get_task("poll")
    worst = (poll.retries + 1) * poll.execution_timeout + poll.retries * poll.max_retry_delay
    assert worst <= timedelta(hours=1, minutes=20)
    assert dag.get_task("announce").trigger_rule == "all_done" and dag.get_task("check").trigger_rule == "all_done"
    assert dag.get_task("announce_s1").trigger_rule == "all_done"
    assert dag.schedule == "0 */6 * * *"
    assert dag.params["aoi"] == "*"
    assert dag.params["start"] is None and dag.params["end"] is None
    assert dag.params["lookback_days"] == 30
    assert dag.params["product_types"] == ["S2MSI2A", "IW_GRDH_1S", "CARD-BS"]
    assert dag.get_task("announce").outlets == [Asset("cbm_ready_products")]
    assert dag.get_task("poll").upstream_task_ids == {"select_aois"}
    assert dag.get_task("announce").upstream_task_ids == {"poll"}
    assert dag.get_task("announce_s1").outlets == [Asset("cbm_s1_products")]  # starts cbm_s1_card
    assert dag.get_task("check").upstream_task_ids == {"select_aois", "poll"}


def test_extract_dag(dagbag: DagBag) -> None:
    dag = dagbag.dags["cbm_extract"]
    assert set(dag.task_ids) == {"claim", "extract", "summary", "publish", "check"}
    # started by the catalogue's asset, not by a clock
    assert dag.schedule == [Asset("cbm_ready_products")]
    assert dag.params["aoi"] == "*"
    assert dag.params["product_id"] is None and dag.params["max_products"] is None
    extract = dag.get_task("extract")
    assert extract.pool == "cbm_extract"
    assert extract.upstream_task_ids == {"claim"}
    assert dag.get_task("summary").trigger_rule == "all_done"
    assert dag.get_task("publish").outlets == [Asset("cbm_parcel_stats")]
    assert {t.task_id for t in dag.leaves} == {"publish", "check"}


def test_params_are_validated(dagbag: DagBag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    extract = dagbag.dags["cbm_extract"].params
    assert extract.get_param("product_id").resolve(42) == 42
    with pytest.raises(ParamValidationError, match="minimum"):
        extract.get_param("max_products").resolve(0)
    with pytest.raises(ParamValidationError, match="Not An AOI"):
        extract.get_param("aoi").resolve("Not An AOI")
    catalogue = dagbag.dags["cbm_catalogue"].params
    assert catalogue.get_param("start").resolve("2018-04-01") == "2018-04-01"
    with pytest.raises(ParamValidationError, match="2018-13-01"):
        catalogue.get_param("start").resolve("2018-13-01")


def test_shared_names_come_from_one_module(dagbag: DagBag) -> None:
    import cbm_common

    from cbm_tasks.ops.airflow_config import EXTRACT_POOL

    assert "cbm_common.py" in (CFG.project / "dags" / ".airflowignore").read_text().split()
    assert all(not dag.fileloc.endswith("cbm_common.py") for dag in dagbag.dags.values())
    catalogue, extract = dagbag.dags["cbm_catalogue"], dagbag.dags["cbm_extract"]
    for dag in (catalogue, extract):
        assert dag.params.get_param("aoi").schema["pattern"] == cbm_common.AOI_PARAM_PATTERN
    assert catalogue.get_task("announce").outlets == [cbm_common.READY_PRODUCTS] == extract.schedule
    assert extract.get_task("extract").pool == cbm_common.EXTRACT_POOL == EXTRACT_POOL


def test_s1_card_dag(dagbag: DagBag) -> None:
    import cbm_common

    from cbm_tasks.ops.airflow_config import CARD_POOL

    dag = dagbag.dags["cbm_s1_card"]
    assert dag.schedule == [Asset("cbm_s1_products")] and dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.task_ids) == {"plan", "jobs_for", "jobs_for__1", "make", "order", "publish", "check"}
    assert dag.get_task("make").pool == dag.get_task("order").pool == cbm_common.CARD_POOL == CARD_POOL
    assert dag.get_task("publish").outlets == [cbm_common.READY_PRODUCTS]  # cbm_extract takes the CARD products
    assert dag.get_task("publish").trigger_rule == dag.get_task("check").trigger_rule == "all_done"
    assert dag.get_task("order").operator_name == "OdpCardOperator"  # deferrable: no slot while waiting
    for task in dag.tasks:
        assert task.retries == 2 and task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout == timedelta(hours=3), task.task_id
    assert dag.params.get_param("aoi").schema["pattern"] == cbm_common.AOI_PARAM_PATTERN


def test_each_dag_keeps_its_retry_policy(dagbag: DagBag) -> None:
    # cbm_common.default_args builds them; each DAG keeps its own numbers
    minutes = lambda n: timedelta(minutes=n)  # noqa: E731
    expected = {
        "cbm_catalogue": (2, minutes(2), minutes(10), minutes(20)),
        "cbm_extract": (3, minutes(1), minutes(20), minutes(30)),
        "cbm_markers": (3, minutes(1), minutes(20), minutes(30)),
        "cbm_s1_card": (2, minutes(2), minutes(30), timedelta(hours=3)),
        "cbm_audit": (3, minutes(1), None, minutes(10)),
    }
    for dag_id, (retries, delay, max_delay, timeout) in expected.items():
        args = dagbag.dags[dag_id].default_args
        assert args["owner"] == "cbm" and args["retry_exponential_backoff"] is True, dag_id
        assert (args["retries"], args["retry_delay"], args.get("max_retry_delay"), args["execution_timeout"]) == (
            retries, delay, max_delay, timeout), dag_id


def test_deployment_settings_replace_the_retry_delay_and_the_claim_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    import cbm_common

    from cbm_tasks.pipeline.lease import LeaseTerms

    args = dict(retries=3, retry_delay=timedelta(minutes=1), execution_timeout=timedelta(minutes=30))
    assert cbm_common.default_args(**args)["retry_delay"] == timedelta(minutes=1)
    assert cbm_common.claim_lease() is None  # LeaseTerms() defaults: 60 s
    monkeypatch.setenv("AIRFLOW__CBM__RETRY_DELAY_SECONDS", "5")
    monkeypatch.setenv("AIRFLOW__CBM__CLAIM_LEASE_SECONDS", "20")
    assert cbm_common.default_args(**args)["retry_delay"] == timedelta(seconds=5)
    assert cbm_common.claim_lease() == LeaseTerms(lease=timedelta(seconds=20), renew_every=timedelta(seconds=5),
                                                  wait=timedelta(seconds=30))
    monkeypatch.setenv("AIRFLOW__CBM__RETRY_DELAY_SECONDS", "")  # docker-compose passes unset as empty
    assert cbm_common.default_args(**args)["retry_delay"] == timedelta(minutes=1)
    for bad in ("5s", "-1", "0", "1.5"):
        monkeypatch.setenv("AIRFLOW__CBM__RETRY_DELAY_SECONDS", bad)
        with pytest.raises(ValueError, match=r"\[cbm\] retry_delay_seconds .* got"):
            cbm_common.default_args(**args)
    monkeypatch.setenv("AIRFLOW__CBM__CLAIM_LEASE_SECONDS", "2")
    with pytest.raises(Exception, match="at least 4 s"):
        cbm_common.claim_lease()


def test_bad_input_fails_the_task_at_once_naming_the_input() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from cbm_common import fail_on_bad_input

    from cbm_tasks.errors import CorruptProductError, TransientError

    with pytest.raises(AirflowFailException, match=r"^product 7: cannot read B04\.tif$") as info:
        with fail_on_bad_input("product 7"):
            raise CorruptProductError("cannot read B04.tif")
    assert isinstance(info.value.__cause__, CorruptProductError)
    with pytest.raises(AirflowFailException, match=r"^unknown AOI 'xx'$"):
        with fail_on_bad_input():
            raise CorruptProductError("unknown AOI 'xx'")
    with pytest.raises(AirflowFailException, match="aoi nl: bad window"):
        with fail_on_bad_input("aoi nl", also=(ValueError,)):
            raise ValueError("bad window")
    # anything else is left to Airflow's retries
    with pytest.raises(TransientError, match="HTTP 503"), fail_on_bad_input("product 7"):
        raise TransientError("HTTP 503")
    with pytest.raises(ValueError, match="bad window"), fail_on_bad_input("aoi nl"):
        raise ValueError("bad window")
