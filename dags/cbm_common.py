"""What the DAGs share: the assets that connect them, pools, parameter patterns, retry policy, error translation.

This file holds no DAG and is listed in ``.airflowignore``. Module level is constants and small
functions only (no import of the heavy libraries): the DAG processor imports it with every DAG
file. The retry policy reads the deployment's `[cbm]` settings (cbm_setting).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from cbm_tasks.pipeline.batches import TARGET_MEGAPIXELS

if TYPE_CHECKING:
    from cbm_tasks.pipeline.lease import LeaseTerms

__all__ = ["ALL_AOIS", "AOI_PARAM_PATTERN", "CARD_POOL", "EXTRACT_BATCH_MEGAPIXELS", "EXTRACT_POOL", "MARKERS",
           "PARCEL_STATS", "READY_PRODUCTS", "S1_PRODUCTS", "cbm_setting", "claim_lease", "default_args",
           "fail_on_bad_input"]

# The assets, in pipeline order: each DAG is scheduled on the one before its own.
S1_PRODUCTS = Asset("cbm_s1_products")  # new raw Sentinel-1 products: cbm_catalogue -> cbm_s1_card
READY_PRODUCTS = Asset("cbm_ready_products")  # images ready to extract: cbm_catalogue (and CARD) -> cbm_extract
PARCEL_STATS = Asset("cbm_parcel_stats")  # per-parcel statistics written: cbm_extract -> markers
MARKERS = Asset("cbm_markers")  # marker events written: markers -> traffic lights

# `cbm airflow start` creates this pool (cbm_tasks.ops.airflow_config.EXTRACT_POOL, the same name);
# its slots bound the memory extraction tasks use on a worker.
EXTRACT_POOL = "cbm_extract"
CARD_POOL = "cbm_card"  # the same: slots = worker memory / memory of one CARD job (sarsen, SNAP)
# Work per mapped cbm_extract task, in megapixels read (the `batch_megapixels` param's default): a full
# Sentinel-2 tile runs alone, hundreds of small chips share a task. A pure module: cheap to import here.
EXTRACT_BATCH_MEGAPIXELS = TARGET_MEGAPIXELS

ALL_AOIS = "*"  # the `aoi` param meaning every AOI with a parcel set
# an AOI name (lower-case identifier, as PostgreSQL keeps unquoted names) or ALL_AOIS
AOI_PARAM_PATTERN = r"^(\*|[a-z][a-z0-9_]{0,62})$"


def default_args(*, retries: int, retry_delay: timedelta, execution_timeout: timedelta,
                 max_retry_delay: timedelta | None = None) -> dict[str, Any]:
    """The ``default_args`` of a cbm DAG: owner ``cbm``, retries with exponential backoff, a timeout per try.

    Each DAG passes its own numbers (how long one try of its work may take, how long its services
    may stay away); ``max_retry_delay`` None leaves Airflow's cap. A deployment's ``[cbm]
    retry_delay_seconds`` (``AIRFLOW__CBM__RETRY_DELAY_SECONDS``) replaces every DAG's first delay.
    """
    configured = cbm_setting("retry_delay_seconds")
    if configured is not None:
        retry_delay = timedelta(seconds=configured)
    args: dict[str, Any] = {"owner": "cbm", "retries": retries, "retry_delay": retry_delay,
                            "retry_exponential_backoff": True}
    if max_retry_delay is not None:
        args["max_retry_delay"] = max_retry_delay
    args["execution_timeout"] = execution_timeout
    return args


@contextmanager
def fail_on_bad_input(what: str = "", *, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Fail the task at once, without retries, when the block raises ``BadInputError`` (or one of ``also``).

    Bad input (a corrupt raster, an unknown AOI, invalid rules) gives the same error on every try,
    so the task fails fast (ARCHITECTURE.md, Conventions: Errors); other errors are left to
    Airflow's retries. ``what`` names the input and prefixes the message (``"product 7: ..."``).
    """
    from cbm_tasks.errors import BadInputError

    try:
        yield
    except (BadInputError, *also) as err:
        raise AirflowFailException(f"{what}: {err}" if what else str(err)) from err


def cbm_setting(key: str) -> int | None:
    """A whole number of seconds from the ``[cbm]`` section of the Airflow configuration, None when unset.

    Set in airflow.cfg or as ``AIRFLOW__CBM__<KEY>`` (the Docker stack passes them so; empty is unset):
    ``retry_delay_seconds`` (every task's first retry delay) and ``claim_lease_seconds`` (how long a
    dead worker's image stays taken; see ``cbm_tasks.pipeline.lease``).
    """
    from airflow.sdk.configuration import conf

    text = (conf.get("cbm", key, fallback="") or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"[cbm] {key} in the Airflow configuration must be a whole number of seconds >= 1, "
                         f"got {text!r}")
    return int(text)


def claim_lease() -> LeaseTerms | None:
    """The claim lease terms of the deployment (``[cbm] claim_lease_seconds``), None for the defaults."""
    from cbm_tasks.pipeline.lease import LeaseTerms

    seconds = cbm_setting("claim_lease_seconds")
    return None if seconds is None else LeaseTerms.of(seconds)
