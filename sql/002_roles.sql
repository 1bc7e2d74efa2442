-- Group roles. Login users are made members of one of them by the deployment:
--   cbm_admin  owns and migrates the schema
--   cbm_writer the pipeline (Airflow tasks): reads and writes rows, no DDL
--   cbm_reader data consumers (REST API, analysts): read only
-- Roles are cluster-wide, so creating them is idempotent.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cbm_admin') THEN
        CREATE ROLE cbm_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cbm_writer') THEN
        CREATE ROLE cbm_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cbm_reader') THEN
        CREATE ROLE cbm_reader NOLOGIN;
    END IF;
END
$$;

GRANT cbm_reader TO cbm_writer;
GRANT USAGE ON SCHEMA cbm TO cbm_reader;
GRANT ALL ON SCHEMA cbm TO cbm_admin;

-- Privileges on every table, sequence and function the migrations create from here on.
ALTER DEFAULT PRIVILEGES IN SCHEMA cbm GRANT SELECT ON TABLES TO cbm_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA cbm GRANT INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO cbm_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA cbm GRANT USAGE, SELECT ON SEQUENCES TO cbm_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA cbm GRANT ALL ON TABLES TO cbm_admin;
