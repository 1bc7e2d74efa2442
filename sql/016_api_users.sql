-- Users of the REST API (cbm_tasks.api), their hashed secrets and the AOIs each may read.
--
-- The API reads as cbm_reader, which must not read secrets: both tables are closed to
-- cbm_reader and cbm_writer (the default privileges of 002 would open them), and the API
-- checks a credential through two SECURITY DEFINER functions that never return a hash.
-- The secret is stretched by the client of these functions (scrypt in Python, per-user salt);
-- the database compares sha256(stored) with sha256(given), so the time the comparison takes
-- tells nothing about how many leading bytes of the stored hash matched.

CREATE TABLE cbm.api_user (
    user_id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    kdf         text NOT NULL,                    -- how secret_hash was derived: scrypt:n=16384,r=8,p=1
    salt        bytea NOT NULL CHECK (length(salt) >= 16),
    secret_hash bytea NOT NULL CHECK (length(secret_hash) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cbm.api_grant (
    user_id    integer NOT NULL REFERENCES cbm.api_user ON DELETE CASCADE,
    aoi_id     smallint NOT NULL REFERENCES cbm.aoi ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, aoi_id)
);

REVOKE ALL ON cbm.api_user, cbm.api_grant FROM PUBLIC, cbm_reader, cbm_writer;
REVOKE ALL ON SEQUENCE cbm.api_user_user_id_seq FROM PUBLIC, cbm_reader, cbm_writer;

-- The KDF and salt to stretch a presented secret with. An unknown name gets a salt derived
-- from the name and the caller's default KDF, so the answer does not tell which names exist.
CREATE FUNCTION cbm.api_salt(p_name text, p_default_kdf text) RETURNS TABLE (kdf text, salt bytea)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.kdf, u.salt FROM cbm.api_user u WHERE u.name = p_name
    UNION ALL
    SELECT p_default_kdf, substring(sha256(convert_to('cbm api unknown user ' || p_name, 'UTF8')) FROM 1 FOR 16)
    WHERE NOT EXISTS (SELECT FROM cbm.api_user u WHERE u.name = p_name)
$$;

-- The user and the AOIs granted to it when p_hash is the stretched secret of p_name; no row otherwise.
CREATE FUNCTION cbm.api_login(p_name text, p_hash bytea) RETURNS TABLE (user_id integer, aois text[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.user_id,
           coalesce(array_agg(a.name ORDER BY a.name) FILTER (WHERE a.name IS NOT NULL), '{}'::text[])
    FROM cbm.api_user u
    LEFT JOIN cbm.api_grant g ON g.user_id = u.user_id
    LEFT JOIN cbm.aoi a ON a.aoi_id = g.aoi_id
    WHERE u.name = p_name AND sha256(u.secret_hash) = sha256(p_hash)
    GROUP BY u.user_id
$$;

REVOKE ALL ON FUNCTION cbm.api_salt(text, text), cbm.api_login(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cbm.api_salt(text, text), cbm.api_login(text, bytea) TO cbm_reader;
