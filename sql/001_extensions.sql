-- Extensions (need a superuser the first time) and the schema that holds every table.
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS btree_gist;  -- GiST on (parcel_set_id, geom)
CREATE SCHEMA IF NOT EXISTS cbm;
