-- Per-parcel statistics of every image.
--
-- Sized for ~1 M parcels x thousands of images: one row per (parcel, image) holds all
-- bands, so the ~28 bytes of row header and line pointer are paid once per image and
-- not once per band. The tables are partitioned by parcel set (AOI x year): a season is
-- dropped or archived as one partition, and each partition carries its own indexes:
--   unique btree (parcel_key, product_id)  time series of one parcel; idempotent re-extraction
--   brin (product_id)                      rows arrive image by image, so deleting one image is cheap

-- What was extracted from one image for one parcel set, and how (lineage of every row).
CREATE TABLE cbm.extraction (
    parcel_set_id      smallint NOT NULL REFERENCES cbm.parcel_set ON DELETE CASCADE,
    product_id         integer NOT NULL REFERENCES cbm.product ON DELETE CASCADE,
    bands              text[] NOT NULL,           -- order of the 8-value blocks in parcel_obs.stats
    class_bands        text[] NOT NULL DEFAULT '{}', -- order of class_band in parcel_class_counts
    parcel_set_version integer NOT NULL,
    n_parcels          integer NOT NULL,          -- parcels with a row in parcel_obs
    n_rows             integer NOT NULL,          -- parcel x band statistics written
    params             jsonb NOT NULL DEFAULT '{}', -- per band: nodata, scale, offset, resolution; engine options
    pipeline_run_id    bigint REFERENCES cbm.pipeline_run ON DELETE SET NULL,
    seconds            real,
    extracted_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parcel_set_id, product_id)
);
CREATE INDEX extraction_product ON cbm.extraction (product_id);

-- stats: for each band of extraction.bands, in that order, 8 values:
--   count, mean, std (population), min, max, p25, p50, p75  (numpy's linear percentiles)
-- in physical units (scale and offset applied). A band with no valid pixel in the parcel has
-- count 0 and NaN elsewhere; a parcel with no valid pixel in any band has no row.
CREATE TABLE cbm.parcel_obs (
    parcel_set_id smallint NOT NULL,
    parcel_key    integer NOT NULL,
    product_id    integer NOT NULL,
    stats         real[] NOT NULL
) PARTITION BY LIST (parcel_set_id);

-- Pixel count per class value (counts[1] is class 0) of categorical bands such as S2 SCL.
CREATE TABLE cbm.parcel_class_counts (
    parcel_set_id smallint NOT NULL,
    parcel_key    integer NOT NULL,
    product_id    integer NOT NULL,
    class_band    smallint NOT NULL,              -- 1-based index into extraction.class_bands
    counts        integer[] NOT NULL
) PARTITION BY LIST (parcel_set_id);

-- Partitions are made by this function (called when a parcel set is created), so that no
-- DDL lives outside sql/ and the pipeline role needs no CREATE privilege.
CREATE FUNCTION cbm.ensure_parcel_set_partitions(p_parcel_set_id smallint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cbm.ensure_parcel_set_partitions'), p_parcel_set_id);
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

-- Long format for analysts, exports and the REST API: one row per parcel, image and band.
CREATE VIEW cbm.parcel_band_stats AS
SELECT o.parcel_set_id,
       o.parcel_key,
       o.product_id,
       p.acquired_at                          AS obs_time,
       p.product_type                         AS source,
       b.band,
       o.stats[(b.i - 1) * 8 + 1]::integer    AS count,
       o.stats[(b.i - 1) * 8 + 2]             AS mean,
       o.stats[(b.i - 1) * 8 + 3]             AS std,
       o.stats[(b.i - 1) * 8 + 4]             AS min,
       o.stats[(b.i - 1) * 8 + 5]             AS max,
       o.stats[(b.i - 1) * 8 + 6]             AS p25,
       o.stats[(b.i - 1) * 8 + 7]             AS p50,
       o.stats[(b.i - 1) * 8 + 8]             AS p75
FROM cbm.parcel_obs o
JOIN cbm.extraction e ON e.parcel_set_id = o.parcel_set_id AND e.product_id = o.product_id
JOIN cbm.product p ON p.product_id = o.product_id
CROSS JOIN LATERAL unnest(e.bands) WITH ORDINALITY AS b(band, i);
