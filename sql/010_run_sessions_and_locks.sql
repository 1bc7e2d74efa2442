-- Orphaned run records and locks only the pipeline can hold.
--
-- A task killed outright (SIGKILL, a lost machine) cannot close its cbm.pipeline_run row. Each run
-- now records the database session that opened it; a run whose session is gone, or whose Airflow
-- task has started a later try, is closed as 'abandoned' (cbm_tasks.lineage.close_abandoned_runs).
ALTER TABLE cbm.pipeline_run DROP CONSTRAINT pipeline_run_status_check;
ALTER TABLE cbm.pipeline_run ADD CONSTRAINT pipeline_run_status_check
    CHECK (status IN ('running', 'success', 'failed', 'abandoned'));
ALTER TABLE cbm.pipeline_run
    ADD COLUMN backend_pid   integer,            -- pg_backend_pid() of the session that started the run
    ADD COLUMN backend_start timestamptz;        -- its pg_stat_activity.backend_start (pids are reused)
CREATE INDEX pipeline_run_running ON cbm.pipeline_run (pipeline_run_id) WHERE status = 'running';

-- Partitions: the advisory lock key of 006 could be held by any role (a reader too) to block
-- every new parcel set. Existing partitions now need no lock at all; creating them takes a
-- self-conflicting lock on the parent table that only roles allowed to change it can take.
CREATE OR REPLACE FUNCTION cbm.ensure_parcel_set_partitions(p_parcel_set_id smallint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part text;
BEGIN
    IF to_regclass(format('cbm.%I', 'parcel_obs_' || p_parcel_set_id)) IS NOT NULL
       AND to_regclass(format('cbm.%I', 'parcel_class_counts_' || p_parcel_set_id)) IS NOT NULL THEN
        RETURN;
    END IF;
    LOCK TABLE ONLY cbm.parcel_obs IN SHARE UPDATE EXCLUSIVE MODE;
    part := 'parcel_obs_' || p_parcel_set_id;
    IF to_regclass(format('cbm.%I', part)) IS NULL THEN
        EXECUTE format('CREATE TABLE cbm.%I PARTITION OF cbm.parcel_obs FOR VALUES IN (%s)',
                       part, p_parcel_set_id);
        EXECUTE format('CREATE UNIQUE INDEX %I ON cbm.%I (parcel_key, product_id)', part || '_key', part);
        EXECUTE format('CREATE INDEX %I ON cbm.%I USING brin (product_id)', part || '_product', part);
    END IF;
    part := 'parcel_class_counts_' || p_parcel_set_id;
    IF to_regclass(format('cbm.%I', part)) IS NULL THEN
        EXECUTE format('CREATE TABLE cbm.%I PARTITION OF cbm.parcel_class_counts FOR VALUES IN (%s)',
                       part, p_parcel_set_id);
        EXECUTE format('CREATE UNIQUE INDEX %I ON cbm.%I (parcel_key, product_id, class_band)',
                       part || '_key', part);
        EXECUTE format('CREATE INDEX %I ON cbm.%I USING brin (product_id)', part || '_product', part);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION cbm.ensure_parcel_set_partitions(smallint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cbm.ensure_parcel_set_partitions(smallint) TO cbm_writer;
