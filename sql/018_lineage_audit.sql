-- Lineage an auditor can rely on: where a run ran, with which parameters, what it read and what
-- it wrote; and once a run is finished, nobody rewrites its record.
--
-- A run is 'running' while its task works; the task (or the clean-up of orphaned runs, which
-- moves 'running' to a closing state) may update it until then. From the moment its status is
-- anything but 'running' the row is final: UPDATE and DELETE raise, for every role, and the
-- pipeline role cannot DELETE or TRUNCATE lineage at all (TRUNCATE skips row triggers).

ALTER TABLE cbm.pipeline_run
    ADD COLUMN host        text,                  -- worker host name
    ADD COLUMN params_hash text;                  -- sha256 of the canonical JSON of params

-- What a run read: catalogue products (object-store URI, checksum), files, a SNAP graph or
-- backend package with its version, a DEM, a parameter file, a table.
CREATE TABLE cbm.run_input (
    pipeline_run_id bigint NOT NULL REFERENCES cbm.pipeline_run,
    seq             smallint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('product', 'file', 'graph', 'backend', 'dem', 'params', 'table')),
    name            text NOT NULL,                -- URI, table name, graph file, package name
    product_id      integer,                      -- cbm.product, when a catalogue product
    checksum        text,                         -- e.g. md5:..., sha256:...
    version         text,                         -- graph / package / parameter version
    detail          jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (pipeline_run_id, seq)
);
CREATE INDEX run_input_product ON cbm.run_input (product_id) WHERE product_id IS NOT NULL;

-- What a run wrote: rows of a table (with the count), a CARD product.
CREATE TABLE cbm.run_output (
    pipeline_run_id bigint NOT NULL REFERENCES cbm.pipeline_run,
    seq             smallint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('table', 'product', 'file')),
    name            text NOT NULL,                -- cbm.parcel_obs, s3://bucket/card/..., a report path
    product_id      integer,
    n_rows          bigint,
    checksum        text,
    detail          jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (pipeline_run_id, seq)
);
CREATE INDEX run_output_product ON cbm.run_output (product_id) WHERE product_id IS NOT NULL;

CREATE FUNCTION cbm.pipeline_run_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.status <> 'running' THEN
        RAISE EXCEPTION 'cbm.pipeline_run % is finished (%): its record cannot be changed',
            OLD.pipeline_run_id, OLD.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER pipeline_run_append_only BEFORE UPDATE OR DELETE ON cbm.pipeline_run
    FOR EACH ROW EXECUTE FUNCTION cbm.pipeline_run_append_only();

-- Inputs and outputs are recorded while their run is running, and never changed afterwards.
CREATE FUNCTION cbm.run_io_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    run_status text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'cbm.% rows are append-only (run %)', TG_TABLE_NAME, OLD.pipeline_run_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT status INTO run_status FROM cbm.pipeline_run WHERE pipeline_run_id = NEW.pipeline_run_id;
    IF run_status IS DISTINCT FROM 'running' THEN
        RAISE EXCEPTION 'cbm.pipeline_run % is finished (%): no % can be added', NEW.pipeline_run_id,
            coalesce(run_status, 'missing'), TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER run_input_append_only BEFORE INSERT OR UPDATE OR DELETE ON cbm.run_input
    FOR EACH ROW EXECUTE FUNCTION cbm.run_io_append_only();
CREATE TRIGGER run_output_append_only BEFORE INSERT OR UPDATE OR DELETE ON cbm.run_output
    FOR EACH ROW EXECUTE FUNCTION cbm.run_io_append_only();

-- The pipeline writes lineage, it never removes it.
REVOKE DELETE, TRUNCATE ON cbm.pipeline_run FROM cbm_writer;
REVOKE UPDATE, DELETE, TRUNCATE ON cbm.run_input, cbm.run_output FROM cbm_writer;
