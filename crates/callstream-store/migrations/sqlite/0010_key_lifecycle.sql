-- Keys may expire, and an admin key may manage its workspace's keys.
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
CREATE INDEX api_keys_revoked ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;
