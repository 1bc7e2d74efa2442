-- The event that decided a traffic light, with its images, in the light's trace (extends 011 / 015).
--
-- A light records the rule that decided it (rule_id) and the deciding event's seq (event_seq), but
-- seq counts per marker: "event #1" is ambiguous when a parcel has a mowing #1 and a vegetation #1.
-- event_marker names the marker of that event (the rule's marker; NULL when no event decided the
-- light, event_seq = 0), so (marker_run_ids[1], parcel_key, event_marker, event_seq) is the key of
-- the event row in cbm.marker_event, and the trace view lists its dates, confidence and images.
ALTER TABLE cbm.traffic_light ADD COLUMN event_marker text;

-- The marker of rule *p_rule_id* of scheme *p_scheme* in the rules file as applied (cbm.scheme_rules,
-- the YAML document as JSON: schemes -> name -> rules[] -> {id, marker}); NULL when not found.
CREATE FUNCTION cbm.rule_marker(p_rules_hash text, p_scheme text, p_rule_id text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT rule ->> 'marker'
    FROM cbm.scheme_rules r,
         jsonb_array_elements(r.content -> 'schemes' -> p_scheme -> 'rules') AS rule
    WHERE r.rules_hash = p_rules_hash AND rule ->> 'id' = p_rule_id
    LIMIT 1
$$;

-- Lights written before this migration: their rule's marker, where an event decided them.
UPDATE cbm.traffic_light
SET event_marker = cbm.rule_marker(rules_hash, scheme, rule_id)
WHERE event_seq > 0 AND event_marker IS NULL;

-- Why is this parcel this colour? 011's columns, then the deciding event and the images behind it
-- (new columns are appended: CREATE OR REPLACE VIEW keeps the existing ones in place).
CREATE OR REPLACE VIEW cbm.traffic_light_trace AS
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
       m.obs_rejected,
       t.event_marker,
       t.event_seq,
       e.event_start,
       e.main_date AS event_main_date,
       e.event_end,
       e.confidence AS event_confidence,
       e.value AS event_value,
       e.start_product AS event_start_product,
       e.end_product AS event_end_product,
       e.evidence AS event_products
FROM cbm.traffic_light t
JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key
JOIN cbm.marker_run r ON r.marker_run_id = t.marker_run_ids[1]
LEFT JOIN cbm.marker_parcel m ON m.marker_run_id = r.marker_run_id AND m.parcel_key = t.parcel_key
LEFT JOIN cbm.marker_event e ON e.marker_run_id = r.marker_run_id AND e.parcel_key = t.parcel_key
                            AND e.marker = t.event_marker AND e.seq = t.event_seq;
