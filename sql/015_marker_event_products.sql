-- Which images prove a marker event (extends 007 / 011).
--
-- The event's dates come from observations: for a mowing, event_start and event_end are the dates
-- of the last high and the first low Sentinel-2 observation. Each of those observations is one
-- image (cbm.product), named here, so an auditor can open the images that show the event:
--   start_product  the image dated event_start (S2)
--   main_product   the image dated main_date, where main_date is an observation's date: the peak
--                  of vegetation, the first bare observation, or the S1 coherence pair that dated a
--                  cut inside a long S2 gap; NULL where main_date lies between observations
--   end_product    the image dated event_end (S2)
-- and evidence (from 007, filled from now on) lists every image behind the event once, in the order
-- start, main, end, then the S1 coherence pairs that dated the cut or raised its confidence.
-- Events written before this migration have NULL products and an empty evidence list.
ALTER TABLE cbm.marker_event
    ADD COLUMN start_product integer,
    ADD COLUMN main_product  integer,
    ADD COLUMN end_product   integer;

COMMENT ON COLUMN cbm.marker_event.evidence IS
    'product ids of the images that prove the event: start, main, end image, then S1 coherence pairs';
