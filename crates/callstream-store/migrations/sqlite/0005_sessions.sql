-- Browser sessions: POST /v1/session exchanges an API key for an HttpOnly cookie. Stored hashed;
-- tied to the key they came from.
CREATE TABLE sessions (
    token_hash    BLOB PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    key_id        TEXT NOT NULL REFERENCES api_keys(id),
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
