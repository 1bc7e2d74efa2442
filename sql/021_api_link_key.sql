-- The key that signs the download links of image chips (cbm_tasks.api.links).
--
-- JRC's raw-chip queries answer a list of relative URLs that the client then downloads without
-- credentials (its notebooks do). Each such link carries what to cut and an expiry, signed with
-- HMAC-SHA256 under this key: the API checks the user's grant when it writes the link, and a link
-- cannot be forged or altered without the key. One key for every API process (the Airflow
-- api-server and `cbm api serve` may run several workers). As the secrets of 016, the key never
-- leaves the database: cbm_reader (the API, and analysts given that role) cannot read it and asks
-- cbm.api_link_mac for the MAC of a message. Rotating it (UPDATE cbm.api_link_key SET key = ...,
-- 32 random bytes) invalidates every link handed out.
CREATE TABLE cbm.api_link_key (
    key_id     smallint PRIMARY KEY DEFAULT 1 CHECK (key_id = 1),
    key        bytea NOT NULL CHECK (length(key) BETWEEN 32 AND 64),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- 244 random bits from the server's strong random source (gen_random_uuid: core PostgreSQL, no extension)
INSERT INTO cbm.api_link_key (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

REVOKE ALL ON cbm.api_link_key FROM PUBLIC, cbm_reader, cbm_writer;

-- HMAC-SHA256 (RFC 2104) of p_message under the key: sha256 is core PostgreSQL, HMAC is not
-- (pgcrypto is an extension a managed database may not offer), so the two pads are built here.
CREATE FUNCTION cbm.api_link_mac(p_message bytea) RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k    bytea;
    ipad bytea := decode(repeat('36', 64), 'hex');
    opad bytea := decode(repeat('5c', 64), 'hex');
BEGIN
    SELECT key INTO STRICT k FROM cbm.api_link_key;
    k := k || decode(repeat('00', 64 - length(k)), 'hex');  -- a key shorter than the block is zero-padded
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(k, i) # 54);   -- 0x36
        opad := set_byte(opad, i, get_byte(k, i) # 92);   -- 0x5c
    END LOOP;
    RETURN sha256(opad || sha256(ipad || p_message));
END
$$;

REVOKE ALL ON FUNCTION cbm.api_link_mac(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cbm.api_link_mac(bytea) TO cbm_reader;
