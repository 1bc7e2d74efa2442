-- Whether a CRS is geographic (lon/lat in degrees): areas, distances and buffers in metres of its
-- geometries need the spheroid (geography). One definition for every query that measures a parcel
-- set: the overlaps of an import, the inner buffer's unit check, the audit report's areas and the
-- API's neighbour distances (each had its own test of the PROJ text before). PostGIS writes
-- +proj=longlat for the EPSG geographic CRSs; PROJ also knows latlong and lonlat.
CREATE FUNCTION cbm.srid_is_geographic(p_srid integer) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT coalesce(bool_or(proj4text ~ '\+proj=(longlat|latlong|lonlat)(\s|$)'), false)
    FROM spatial_ref_sys WHERE srid = p_srid
$$;
GRANT EXECUTE ON FUNCTION cbm.srid_is_geographic(integer) TO cbm_reader;

CREATE OR REPLACE FUNCTION cbm.find_parcel_overlaps(p_parcel_set_id smallint) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    geographic boolean;
    n integer;
BEGIN
    SELECT cbm.srid_is_geographic(s.srid) INTO geographic
    FROM cbm.parcel_set s WHERE s.parcel_set_id = p_parcel_set_id;
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
