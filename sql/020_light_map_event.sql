-- The QGIS layer of the lights (011) with the deciding event's marker and date (019), so that an
-- inspector can label a parcel "mowing 2018-06-10" or filter on it. Columns are appended.
CREATE OR REPLACE VIEW cbm.traffic_light_map AS
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
       ST_Transform(p.geom, 4326)::geometry(MultiPolygon, 4326) AS geom,
       t.event_marker,
       e.main_date                                        AS event_date
FROM cbm.traffic_light t
JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key
JOIN cbm.parcel_set s ON s.parcel_set_id = t.parcel_set_id
JOIN cbm.aoi a ON a.aoi_id = s.aoi_id
LEFT JOIN cbm.marker_event e ON e.marker_run_id = t.marker_run_ids[1] AND e.parcel_key = t.parcel_key
                            AND e.marker = t.event_marker AND e.seq = t.event_seq;
