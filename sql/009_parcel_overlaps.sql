-- Overlapping parcels and the version each parcel's geometry dates from.
--
-- Real registers hold overlapping declarations (which agencies check in their own right). A
-- pixel whose centre lies in two parcels belongs to both: the extraction burns the parcels
-- listed here into extra label layers, so that no parcel loses pixels to another. The import
-- fills the table (cbm.find_parcel_overlaps) in its transaction and reports it.
CREATE TABLE cbm.parcel_overlap (
    parcel_set_id smallint NOT NULL REFERENCES cbm.parcel_set ON DELETE CASCADE,
    parcel_key_a  integer NOT NULL,
    parcel_key_b  integer NOT NULL,
    area_m2       double precision NOT NULL,      -- of the intersection; geodesic for lon/lat sets
    PRIMARY KEY (parcel_set_id, parcel_key_a, parcel_key_b),
    CHECK (parcel_key_a < parcel_key_b)
);

-- Pairs whose interiors share an area (ST_Relate '2********'): touching parcels are not
-- overlaps. Replaces the set's rows; returns the number of pairs.
CREATE FUNCTION cbm.find_parcel_overlaps(p_parcel_set_id smallint) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    geographic boolean;
    n integer;
BEGIN
    SELECT coalesce(r.proj4text LIKE '%+proj=longlat%', false) INTO geographic
    FROM cbm.parcel_set s LEFT JOIN spatial_ref_sys r ON r.srid = s.srid
    WHERE s.parcel_set_id = p_parcel_set_id;
    DELETE FROM cbm.parcel_overlap WHERE parcel_set_id = p_parcel_set_id;
    INSERT INTO cbm.parcel_overlap (parcel_set_id, parcel_key_a, parcel_key_b, area_m2)
    SELECT p_parcel_set_id, pair.key_a, pair.key_b,
           CASE WHEN geographic THEN ST_Area(geography(ST_Transform(pair.shared, 4326)))
                ELSE ST_Area(pair.shared) END
    FROM (SELECT a.parcel_key AS key_a, b.parcel_key AS key_b, ST_Intersection(a.geom, b.geom) AS shared
          FROM cbm.parcel a
          JOIN cbm.parcel b ON b.parcel_set_id = a.parcel_set_id AND b.parcel_key > a.parcel_key
                           AND ST_Intersects(a.geom, b.geom)
          WHERE a.parcel_set_id = p_parcel_set_id AND ST_Relate(a.geom, b.geom, '2********')) pair;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
GRANT EXECUTE ON FUNCTION cbm.find_parcel_overlaps(smallint) TO cbm_writer;

-- The set version that last gave a parcel its geometry (new or changed parcel). An image
-- extracted at version v lacks the rows of exactly the parcels with geom_version > v: the
-- pipeline extracts those parcels only to bring the set's time series back to complete.
ALTER TABLE cbm.parcel ADD COLUMN geom_version integer NOT NULL DEFAULT 1;

-- Existing sets: which parcels changed in earlier imports is unknown, so every parcel dates
-- from the set's current version (images extracted at an older one get all their parcels
-- again), and their overlaps are found now.
UPDATE cbm.parcel p SET geom_version = s.version FROM cbm.parcel_set s
WHERE s.parcel_set_id = p.parcel_set_id AND s.version <> 1;
SELECT cbm.find_parcel_overlaps(parcel_set_id) FROM cbm.parcel_set;
