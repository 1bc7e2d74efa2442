#!/usr/bin/env bash
# Runs once, when the postgis container initialises an empty data volume
# (docker-entrypoint-initdb.d). Creates Airflow's metadata database and the CbM database with
# their roles; the names and passwords come from the container's environment (docker/.env).
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD in .env}"
: "${CBM_DB_OWNER_PASSWORD:?set CBM_DB_OWNER_PASSWORD in .env}"
: "${CBM_DB_PASSWORD:?set CBM_DB_PASSWORD in .env}"
# Values go in as psql variables (:'x' quotes a literal, :"x" an identifier): never spliced into SQL text.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  -v airflow_db="${AIRFLOW_DB_NAME:-airflow}" \
  -v airflow_user="${AIRFLOW_DB_USER:-airflow}" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" \
  -v cbm_db="${CBM_DB_NAME:-cbm}" \
  -v cbm_owner="${CBM_DB_OWNER:-cbm_owner}" \
  -v cbm_owner_password="$CBM_DB_OWNER_PASSWORD" \
  -v cbm_user="${CBM_DB_USER:-cbm}" \
  -v cbm_password="$CBM_DB_PASSWORD" \
  -f "$(dirname "$0")/cbm-databases.psql"
