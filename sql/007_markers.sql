-- Markers computed from parcel time series, and the traffic light per parcel and aid scheme.

-- One marker computation over a parcel set: which marker, which parameters, which code, and
-- which images it could see (the time window and products are in params / inputs).
CREATE TABLE cbm.marker_run (
    marker_run_id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parcel_set_id   smallint NOT NULL REFERENCES cbm.parcel_set ON DELETE CASCADE,
    marker          text NOT NULL,                -- mowing, harvest, bare_soil, vegetation, data_sufficiency, ...
    params          jsonb NOT NULL DEFAULT '{}',
    product_ids     integer[] NOT NULL DEFAULT '{}', -- images whose statistics were read
    pipeline_run_id bigint REFERENCES cbm.pipeline_run ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A marker event of one parcel (e.g. a mowing on a date), with the evidence behind it.
CREATE TABLE cbm.marker_event (
    marker_run_id integer NOT NULL REFERENCES cbm.marker_run ON DELETE CASCADE,
    parcel_key    integer NOT NULL,
    seq           smallint NOT NULL DEFAULT 1,    -- several events per parcel (two mowings)
    event_start   date,
    event_end     date,
    value         real,                           -- marker-specific magnitude (e.g. NDVI drop)
    confidence    real CHECK (confidence BETWEEN 0 AND 1),
    evidence      integer[] NOT NULL DEFAULT '{}', -- product_ids that show the event
    detail        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (marker_run_id, parcel_key, seq)
);

CREATE TABLE cbm.traffic_light (
    parcel_set_id   smallint NOT NULL REFERENCES cbm.parcel_set ON DELETE CASCADE,
    parcel_key      integer NOT NULL,
    scheme          text NOT NULL,                -- aid scheme / eco-scheme code
    colour          text NOT NULL CHECK (colour IN ('green', 'yellow', 'red')),
    reason          text NOT NULL,
    marker_run_ids  integer[] NOT NULL DEFAULT '{}',
    pipeline_run_id bigint REFERENCES cbm.pipeline_run ON DELETE SET NULL,
    decided_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parcel_set_id, parcel_key, scheme)
);
