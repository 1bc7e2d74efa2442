-- An inner (negative) buffer per parcel set: the extraction reads each parcel shrunk by it.
--
-- A pixel at a parcel's edge mixes the parcel with its neighbour (a road, a ploughed field, a
-- hedge), and Sentinel-2's co-registration between dates (5-10 m) moves that mixture from image to
-- image: a small grassland seen with some bare neighbour in one image looks cut. Paying agencies
-- therefore extract from the parcel shrunk by 5-10 m (JRC's FOI check example uses -10 m).
-- `cbm parcels import --inner-buffer M` sets it for the set; each parcel's shrunk geometry is kept
-- in geom_inner, so an extraction does not buffer again. A parcel that the buffer would empty (a
-- strip narrower than twice M) keeps its whole geometry for the extraction: geom_inner NULL.
ALTER TABLE cbm.parcel_set
    ADD COLUMN inner_buffer_m smallint NOT NULL DEFAULT 0 CHECK (inner_buffer_m BETWEEN 0 AND 100);
ALTER TABLE cbm.parcel
    ADD COLUMN geom_inner geometry CHECK (geom_inner IS NULL OR ST_GeometryType(geom_inner) = 'ST_MultiPolygon');

-- The parcel shrunk by `metres`, as a MultiPolygon in the parcel's CRS (empty when nothing is
-- left): a lon/lat CRS (`geographic`) is buffered on the spheroid, a projected one in its own units,
-- which the import checks are metres. One expression, so that PostgreSQL inlines it.
CREATE FUNCTION cbm.inner_geometry(geom geometry, metres integer, geographic boolean) RETURNS geometry
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ST_Multi(ST_CollectionExtract(CASE WHEN geographic THEN ST_Buffer(geom::geography, -metres)::geometry
                                              ELSE ST_Buffer(geom, -metres) END, 3))
$$;
