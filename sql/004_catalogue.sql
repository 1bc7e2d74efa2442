-- The image catalogue and the work state of each image per AOI.

CREATE TABLE cbm.product (
    product_id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid                 text NOT NULL UNIQUE,     -- the catalogue's id (CDSE Id, STAC item id, product name)
    name                text NOT NULL,            -- e.g. S2A_MSIL2A_20180405T105031_N0206_R051_T31UDS_...
    catalogue           text NOT NULL,            -- cdse-odata, cdse-stac, local, file, card
    collection          text NOT NULL,            -- SENTINEL-1, SENTINEL-2
    product_type        text NOT NULL,            -- S2MSI2A, IW_GRDH_1S, IW_SLC__1S, CARD-BS, CARD-COH6, CARD-COH12
    platform            text,                     -- S1A, S2B, ...
    acquired_at         timestamptz NOT NULL,     -- sensing start
    relative_orbit      smallint,
    orbit_direction     text CHECK (orbit_direction IN ('ASCENDING', 'DESCENDING')),
    tile                text,                     -- MGRS tile of S2 products
    processing_baseline text,
    footprint           geometry(MultiPolygon, 4326),
    location            text NOT NULL,            -- object-store URL (s3://...) or local path
    checksum            text,                     -- as published by the catalogue, e.g. md5:...
    size_bytes          bigint,
    derived_from        integer[],                -- product_ids a CARD product was made from
    attributes          jsonb NOT NULL DEFAULT '{}',
    discovered_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX product_footprint_gist ON cbm.product USING gist (footprint);
CREATE INDEX product_type_time ON cbm.product (product_type, acquired_at);

-- Work state of one product for one AOI:
--   new -> processing -> ready -> extracting -> extracted
--   (S2 L2A and ready-made CARD products enter as ready), failed after max attempts,
--   skipped when there is nothing to do (e.g. no parcel inside the valid footprint).
CREATE TABLE cbm.product_status (
    product_id  integer NOT NULL REFERENCES cbm.product ON DELETE CASCADE,
    aoi_id      smallint NOT NULL REFERENCES cbm.aoi ON DELETE CASCADE,
    status      text NOT NULL DEFAULT 'new'
                CHECK (status IN ('new', 'processing', 'ready', 'extracting', 'extracted', 'failed', 'skipped')),
    attempts    smallint NOT NULL DEFAULT 0,
    last_error  text,
    claimed_by  text,                             -- worker/task that holds the claim
    claimed_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, aoi_id)
);
CREATE INDEX product_status_open ON cbm.product_status (aoi_id, status)
    WHERE status NOT IN ('extracted', 'skipped');
