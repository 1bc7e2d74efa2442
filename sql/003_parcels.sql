-- Areas of interest, parcel sets (one per AOI and year) and parcels.

CREATE TABLE cbm.aoi (
    aoi_id      smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cbm.parcel_set (
    -- smallint: the id is repeated in every time-series row
    parcel_set_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aoi_id        smallint NOT NULL REFERENCES cbm.aoi ON DELETE CASCADE,
    year          smallint NOT NULL CHECK (year BETWEEN 2014 AND 2100),
    srid          integer NOT NULL,               -- CRS of cbm.parcel.geom for this set (the agency's)
    version       integer NOT NULL DEFAULT 1,     -- bumped by every import; keys cached label rasters
    source_file   text NOT NULL,
    source_layer  text,
    n_parcels     integer NOT NULL DEFAULT 0,
    extent        geometry(Polygon, 4326),        -- for matching catalogue footprints
    imported_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aoi_id, year)
);

CREATE TABLE cbm.parcel (
    parcel_set_id smallint NOT NULL REFERENCES cbm.parcel_set ON DELETE CASCADE,
    -- 1..n within the set, stable across re-imports for the same parcel_id: the label value in
    -- rasterised parcel masks and the compact key of every time-series row
    parcel_key    integer NOT NULL CHECK (parcel_key > 0),
    parcel_id     text NOT NULL,                  -- as declared by the agency
    crop_code     text,
    crop_name     text,
    area_m2       double precision NOT NULL,      -- computed in the set's CRS (or geodesic for lon/lat)
    geom          geometry NOT NULL CHECK (ST_GeometryType(geom) = 'ST_MultiPolygon'),
    PRIMARY KEY (parcel_set_id, parcel_key),
    UNIQUE (parcel_set_id, parcel_id)
);
CREATE INDEX parcel_geom_gist ON cbm.parcel USING gist (parcel_set_id, geom);

-- One row per `cbm parcels import`, with what was rejected and why.
CREATE TABLE cbm.parcel_import (
    import_id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parcel_set_id smallint REFERENCES cbm.parcel_set ON DELETE CASCADE,
    source_file   text NOT NULL,
    source_layer  text,
    options       jsonb NOT NULL DEFAULT '{}',
    n_read        integer NOT NULL,
    n_imported    integer NOT NULL,
    n_repaired    integer NOT NULL,
    n_rejected    integer NOT NULL,
    imported_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cbm.parcel_rejection (
    import_id   integer NOT NULL REFERENCES cbm.parcel_import ON DELETE CASCADE,
    source_fid  bigint NOT NULL,                  -- feature index in the source layer (0-based)
    parcel_id   text,
    reason      text NOT NULL,
    PRIMARY KEY (import_id, source_fid)
);
