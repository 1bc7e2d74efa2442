-- The highest parcel_key ever given in a set. New parcel ids get keys above it, so a key
-- that belonged to a removed parcel is never given to another one: markers, traffic lights
-- and archived time series that still hold the old key keep pointing at that parcel.
ALTER TABLE cbm.parcel_set ADD COLUMN max_parcel_key integer NOT NULL DEFAULT 0;
UPDATE cbm.parcel_set s
SET max_parcel_key = coalesce((SELECT max(p.parcel_key) FROM cbm.parcel p WHERE p.parcel_set_id = s.parcel_set_id), 0);
