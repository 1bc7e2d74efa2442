-- The migration history. Applied by the runner before anything else.
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version     text PRIMARY KEY,                 -- file name without .sql, e.g. 003_parcels
    checksum    text NOT NULL,                    -- sha256 of the file: a migration is never edited after merge
    applied_at  timestamptz NOT NULL DEFAULT now()
);
