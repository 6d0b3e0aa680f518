-- Keys may expire, and an admin key may manage its workspace's keys.
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE api_keys ADD COLUMN admin BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX api_keys_revoked ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;

-- The row type grew: the lookup by hash is made again over it.
CREATE OR REPLACE FUNCTION cs_key_by_hash(p_hash BYTEA)
RETURNS SETOF api_keys LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM api_keys WHERE key_hash = p_hash;
$$;

-- Keys of every workspace revoked at or after `p_since`, for each node to close the streams
-- opened with them: across workspaces, so a function of the owner's, answering only ids.
CREATE FUNCTION cs_keys_revoked_since(p_since TIMESTAMPTZ)
RETURNS TABLE (id TEXT) LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    SELECT k.id FROM api_keys k WHERE k.revoked_at >= p_since;
$$;
REVOKE ALL ON FUNCTION cs_keys_revoked_since(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cs_keys_revoked_since(timestamptz) TO callstream_app;

-- A workspace by its name, before its id is known (the command line names workspaces).
CREATE FUNCTION cs_workspace_by_name(p_name TEXT)
RETURNS SETOF workspaces LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    SELECT * FROM workspaces WHERE name = p_name;
$$;
REVOKE ALL ON FUNCTION cs_workspace_by_name(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cs_workspace_by_name(text) TO callstream_app;
