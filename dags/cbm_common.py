"""Names shared by the DAGs: the assets that connect them, pools and parameter patterns.

This file holds no DAG and is listed in ``.airflowignore``. Module level is constants only:
the DAG processor imports it with every DAG file.
"""

from __future__ import annotations

from airflow.sdk import Asset

from cbm_tasks.pipeline.batches import TARGET_MEGAPIXELS

__all__ = ["ALL_AOIS", "AOI_PARAM_PATTERN", "CARD_POOL", "EXTRACT_BATCH_MEGAPIXELS", "EXTRACT_POOL", "MARKERS",
           "PARCEL_STATS", "READY_PRODUCTS", "S1_PRODUCTS"]

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
