-- Short-lived, call-scoped tokens that let a browser open a stream without a long-lived key in
-- its URL. Stored hashed, like keys; each remembers the key it came from, so revoking the key
-- revokes its tokens.
CREATE TABLE stream_tokens (
    token_hash    BLOB PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    call_id       TEXT NOT NULL REFERENCES calls(id),
    key_id        TEXT NOT NULL REFERENCES api_keys(id),
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX stream_tokens_by_expiry ON stream_tokens (expires_at);
