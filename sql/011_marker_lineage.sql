-- Markers and traffic lights that can be explained and recomputed bit for bit (extends 007).
--
-- One marker run (cbm.marker_run, marker = 'all') computes every marker of `markers` for a set
-- of parcels with one parameter set (params + params_hash) and one code version. Per parcel it
-- records which images were read and which of them were rejected (cbm.marker_parcel), its events
-- (cbm.marker_event, now with the marker and main date), and each light records the rule, the
-- rules version and hash (cbm.scheme_rules holds the rules themselves) and the runs behind it.

ALTER TABLE cbm.marker_run
    ADD COLUMN markers        text[] NOT NULL DEFAULT '{}',  -- markers computed (marker = 'all')
    ADD COLUMN params_version integer,
    ADD COLUMN params_hash    text,                          -- sha256 of the canonical params JSON
    ADD COLUMN code_version   text,
    ADD COLUMN use_s1         boolean NOT NULL DEFAULT true,
    ADD COLUMN scope          text NOT NULL DEFAULT 'full' CHECK (scope IN ('full', 'incremental')),
    -- the read's transaction time: images extracted later are new for this run's parcels
    ADD COLUMN read_at        timestamptz,
    ADD COLUMN n_parcels      integer NOT NULL DEFAULT 0;

-- marker_event had no marker of its own (one run per marker); a run now holds all markers.
-- No code wrote events before this migration, so the new NOT NULL column needs no default.
ALTER TABLE cbm.marker_event
    ADD COLUMN marker    text NOT NULL,
    ADD COLUMN main_date date,
    ADD COLUMN sources   text NOT NULL DEFAULT '-',         -- sensors that show it: s2, s2+bs, ...
    DROP CONSTRAINT marker_event_pkey,
    ADD PRIMARY KEY (marker_run_id, parcel_key, marker, seq);

-- Per run and parcel: the images read (product ids) and the Sentinel-2 ones rejected (cloud,
-- cloud dip, NaN). obs_used + obs_rejected are exactly the parcel_obs rows the run read.
CREATE TABLE cbm.marker_parcel (
    marker_run_id integer NOT NULL REFERENCES cbm.marker_run ON DELETE CASCADE,
    parcel_key    integer NOT NULL,
    n_used        integer NOT NULL,
    n_rejected    integer NOT NULL,
    obs_used      integer[] NOT NULL,
    obs_rejected  integer[] NOT NULL,
    PRIMARY KEY (marker_run_id, parcel_key)
);
CREATE INDEX marker_parcel_key ON cbm.marker_parcel (parcel_key);

-- A rules file as it was applied (content is the parsed, validated rules).
CREATE TABLE cbm.scheme_rules (
    rules_hash  text PRIMARY KEY,
    version     integer NOT NULL,
    source      text NOT NULL,
    content     jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE cbm.traffic_light
    ADD COLUMN light_id         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- QGIS feature id
    ADD COLUMN rule_id          text,
    ADD COLUMN rules_version    integer,
    ADD COLUMN rules_hash       text REFERENCES cbm.scheme_rules ON DELETE RESTRICT,
    ADD COLUMN season           smallint,
    ADD COLUMN event_seq        smallint NOT NULL DEFAULT 0,  -- the deciding event of the rule's marker
    ADD COLUMN n_clear_obs      integer,
    ADD COLUMN longest_gap_days real;
CREATE INDEX traffic_light_runs ON cbm.traffic_light USING gin (marker_run_ids);

-- Removed parcels: `cbm parcels import` calls this for the keys it retires, in its transaction
-- (a re-import deletes and re-inserts every parcel, so a foreign key cascade would wipe all).
CREATE FUNCTION cbm.forget_parcel_markers(p_parcel_set_id smallint, p_keys integer[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM cbm.traffic_light WHERE parcel_set_id = p_parcel_set_id AND parcel_key = ANY(p_keys);
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM cbm.marker_event e USING cbm.marker_run r
     WHERE e.marker_run_id = r.marker_run_id AND r.parcel_set_id = p_parcel_set_id AND e.parcel_key = ANY(p_keys);
    DELETE FROM cbm.marker_parcel m USING cbm.marker_run r
     WHERE m.marker_run_id = r.marker_run_id AND r.parcel_set_id = p_parcel_set_id AND m.parcel_key = ANY(p_keys);
    RETURN n;
END
$$;

-- The layer QGIS opens: one row per parcel and scheme with its light. Key column: light_id
-- (bigint, unique); geometry: geom (MultiPolygon, EPSG:4326, whatever the set's CRS).
CREATE VIEW cbm.traffic_light_map AS
SELECT t.light_id,
       a.name                                             AS aoi,
       s.year,
       p.parcel_id,
       p.crop_code,
       t.scheme,
       t.colour,
       t.reason,
       t.rule_id,
       t.rules_version,
       t.n_clear_obs,
       t.longest_gap_days,
       t.event_seq,
       t.decided_at,
       p.area_m2,
       ST_Transform(p.geom, 4326)::geometry(MultiPolygon, 4326) AS geom
FROM cbm.traffic_light t
JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key
JOIN cbm.parcel_set s ON s.parcel_set_id = t.parcel_set_id
JOIN cbm.aoi a ON a.aoi_id = s.aoi_id;

-- Why is this parcel this colour? A light with its rule, parameters, code and observations.
CREATE VIEW cbm.traffic_light_trace AS
SELECT t.light_id,
       t.parcel_set_id,
       t.parcel_key,
       p.parcel_id,
       t.scheme,
       t.colour,
       t.reason,
       t.rule_id,
       t.rules_version,
       t.rules_hash,
       r.marker_run_id,
       r.params_hash,
       r.params_version,
       r.code_version,
       r.use_s1,
       r.pipeline_run_id,
       m.obs_used,
       m.obs_rejected
FROM cbm.traffic_light t
JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key
JOIN cbm.marker_run r ON r.marker_run_id = t.marker_run_ids[1]
LEFT JOIN cbm.marker_parcel m ON m.marker_run_id = r.marker_run_id AND m.parcel_key = t.parcel_key;
