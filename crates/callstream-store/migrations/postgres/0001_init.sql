-- callstream's schema on PostgreSQL, with row-level security per workspace.
--
-- Run by `callstream migrate` as the owner role (it owns every table and function here, and has
-- BYPASSRLS so that the few functions below that must see across workspaces can). The gateway
-- connects as `callstream_app`, which owns nothing, has no BYPASSRLS, and sees a tenant row only
-- inside a transaction that set `app.workspace_id` to that row's workspace
-- (`SELECT set_config('app.workspace_id', $1, true)`). Without it, it sees nothing and can write
-- nothing. Both roles exist before this runs (docs/operations.md, "PostgreSQL").

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'callstream_app') THEN
        RAISE EXCEPTION 'the role callstream_app does not exist: create it first (docs/operations.md, "PostgreSQL")';
    END IF;
END
$$;

CREATE TABLE workspaces (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    auth_id         TEXT NOT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL,
    signing_secret  TEXT
);

-- Keys are stored as the SHA-256 of the secret; the secret itself is never stored.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    kind          TEXT NOT NULL CHECK (kind IN ('api', 'runtime')),
    key_hash      BYTEA NOT NULL UNIQUE,
    hint          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id);

CREATE TABLE calls (
    id                       TEXT PRIMARY KEY,
    workspace_id             TEXT NOT NULL REFERENCES workspaces(id),
    phone                    TEXT NOT NULL,
    direction                TEXT NOT NULL,
    transport                TEXT NOT NULL,
    external_id              TEXT,
    status                   TEXT NOT NULL,
    live_conversation_token  TEXT NOT NULL UNIQUE,
    started_at               TIMESTAMPTZ NOT NULL,
    ended_at                 TIMESTAMPTZ,
    last_seq                 BIGINT NOT NULL DEFAULT 0,
    screening_ended_at       TIMESTAMPTZ,
    screening_msg            TEXT
);
CREATE INDEX calls_by_workspace ON calls (workspace_id, started_at DESC);
CREATE INDEX calls_by_external_id ON calls (workspace_id, external_id);

-- Final transcript turns only; partials live on the bus.
CREATE TABLE transcript_turns (
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    call_id        TEXT NOT NULL REFERENCES calls(id),
    turn_id        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    role           TEXT NOT NULL,
    text           TEXT NOT NULL,
    confidence     DOUBLE PRECISION,
    segment_start  DOUBLE PRECISION,
    segment_end    DOUBLE PRECISION,
    ts             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (call_id, turn_id)
);
CREATE INDEX transcript_turns_by_call ON transcript_turns (workspace_id, call_id, seq);

CREATE TABLE conversations (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    channel       TEXT NOT NULL,
    participants  TEXT NOT NULL,
    mode          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_seq      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX conversations_by_workspace ON conversations (workspace_id, created_at DESC);

CREATE TABLE messages (
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    conversation_id  TEXT NOT NULL REFERENCES conversations(id),
    message_id       TEXT NOT NULL,
    first_seq        BIGINT NOT NULL,
    last_seq         BIGINT NOT NULL,
    direction        TEXT NOT NULL,
    text             TEXT,
    status           TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
);

CREATE TABLE stream_tokens (
    token_hash    BYTEA PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    call_id       TEXT NOT NULL REFERENCES calls(id),
    key_id        TEXT NOT NULL REFERENCES api_keys(id),
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX stream_tokens_by_expiry ON stream_tokens (workspace_id, expires_at);

CREATE TABLE sessions (
    token_hash    BYTEA PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    key_id        TEXT NOT NULL REFERENCES api_keys(id),
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (workspace_id, expires_at);

CREATE TABLE webhook_endpoints (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    event_types      TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    disabled_at      TIMESTAMPTZ,
    disabled_reason  TEXT
);
CREATE INDEX webhook_endpoints_by_workspace ON webhook_endpoints (workspace_id);

CREATE TABLE webhook_outbox (
    endpoint_id       TEXT NOT NULL REFERENCES webhook_endpoints(id),
    event_id          TEXT NOT NULL,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    event_type        TEXT NOT NULL,
    payload           BYTEA NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    first_attempt_at  TIMESTAMPTZ,
    next_attempt_at   TIMESTAMPTZ NOT NULL,
    last_status       INTEGER,
    last_error        TEXT,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_attempt_at);

CREATE TABLE audio_streams (
    id                      TEXT PRIMARY KEY,
    workspace_id            TEXT NOT NULL REFERENCES workspaces(id),
    call_id                 TEXT NOT NULL REFERENCES calls(id),
    service_url             TEXT NOT NULL,
    audio_track             TEXT NOT NULL,
    bidirectional           BOOLEAN NOT NULL,
    content_type            TEXT NOT NULL,
    l16_big_endian          BOOLEAN NOT NULL DEFAULT false,
    stream_timeout_secs     BIGINT NOT NULL,
    status_callback_url     TEXT,
    status_callback_method  TEXT NOT NULL,
    extra_headers           TEXT NOT NULL DEFAULT '',
    status                  TEXT NOT NULL,
    created_at              TIMESTAMPTZ NOT NULL,
    start_time              TIMESTAMPTZ,
    end_time                TIMESTAMPTZ,
    end_reason              TEXT
);
CREATE INDEX audio_streams_by_call ON audio_streams (workspace_id, call_id, created_at);
CREATE INDEX audio_streams_by_status ON audio_streams (status);

CREATE TABLE callback_outbox (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    url               TEXT NOT NULL,
    method            TEXT NOT NULL,
    body              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL,
    first_attempt_at  TIMESTAMPTZ,
    next_attempt_at   TIMESTAMPTZ NOT NULL,
    last_status       INTEGER,
    last_error        TEXT
);
CREATE INDEX callback_outbox_due ON callback_outbox (status, next_attempt_at);

-- Row-level security: a row is visible and writable only to the workspace set for the
-- transaction. `nullif(…, '')`: once set in a session the setting reads '' rather than NULL.
-- The `(SELECT …)` makes PostgreSQL evaluate it once per query, not per row.
ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON workspaces
    USING (id = (SELECT nullif(current_setting('app.workspace_id', true), '')))
    WITH CHECK (id = (SELECT nullif(current_setting('app.workspace_id', true), '')));

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'calls', 'transcript_turns', 'conversations', 'messages',
                             'stream_tokens', 'sessions', 'webhook_endpoints', 'webhook_outbox',
                             'audio_streams', 'callback_outbox']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant ON %I USING (workspace_id = (SELECT nullif(current_setting(''app.workspace_id'', true), ''''))) '
            'WITH CHECK (workspace_id = (SELECT nullif(current_setting(''app.workspace_id'', true), '''')))', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO callstream_app', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON workspaces TO callstream_app;

-- The few reads that must happen before a workspace is known, or across workspaces, are these
-- functions. They run as their owner (SECURITY DEFINER) and each answers exactly one narrow
-- question: a row by an unguessable hash, a workspace by name, the outboxes' due rows.

CREATE FUNCTION cs_ensure_workspace(p_id TEXT, p_name TEXT, p_auth_id TEXT, p_created_at TIMESTAMPTZ)
RETURNS SETOF workspaces LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO workspaces (id, name, auth_id, created_at) VALUES (p_id, p_name, p_auth_id, p_created_at)
        ON CONFLICT (name) DO NOTHING;
    SELECT * FROM workspaces WHERE name = p_name;
$$;

CREATE FUNCTION cs_key_by_hash(p_hash BYTEA)
RETURNS SETOF api_keys LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM api_keys WHERE key_hash = p_hash;
$$;

CREATE FUNCTION cs_stream_token_by_hash(p_hash BYTEA)
RETURNS SETOF stream_tokens LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.* FROM stream_tokens t JOIN api_keys k ON k.id = t.key_id
    WHERE t.token_hash = p_hash AND k.revoked_at IS NULL;
$$;

CREATE FUNCTION cs_session_by_hash(p_hash BYTEA)
RETURNS SETOF sessions LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT s.* FROM sessions s JOIN api_keys k ON k.id = s.key_id
    WHERE s.token_hash = p_hash AND k.revoked_at IS NULL;
$$;

CREATE FUNCTION cs_delete_session(p_hash BYTEA)
RETURNS VOID LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    DELETE FROM sessions WHERE token_hash = p_hash;
$$;

-- Claims due deliveries for one worker: each row is taken by one node at a time
-- (FOR UPDATE SKIP LOCKED) and leased until `p_lease_until`, after which it is due again unless
-- its outcome was recorded.
CREATE FUNCTION cs_claim_deliveries(p_now TIMESTAMPTZ, p_lease_until TIMESTAMPTZ, p_limit INTEGER)
RETURNS TABLE (kind TEXT, workspace_id TEXT, endpoint_id TEXT, message_id TEXT, url TEXT,
               secret TEXT, method TEXT, payload BYTEA, attempts INTEGER,
               first_attempt_at TIMESTAMPTZ)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT o.endpoint_id AS e, o.event_id AS m FROM webhook_outbox o
        WHERE o.status = 'pending' AND o.next_attempt_at <= p_now
        ORDER BY o.next_attempt_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_outbox o SET next_attempt_at = p_lease_until
        FROM due WHERE o.endpoint_id = due.e AND o.event_id = due.m
        RETURNING o.*
    )
    SELECT 'webhook'::TEXT, c.workspace_id, c.endpoint_id, c.event_id, e.url, e.secret,
           'POST'::TEXT, c.payload, c.attempts, c.first_attempt_at
    FROM claimed c JOIN webhook_endpoints e ON e.id = c.endpoint_id;

    RETURN QUERY
    WITH due AS (
        SELECT o.id AS i FROM callback_outbox o
        WHERE o.status = 'pending' AND o.next_attempt_at <= p_now
        ORDER BY o.next_attempt_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE callback_outbox o SET next_attempt_at = p_lease_until
        FROM due WHERE o.id = due.i
        RETURNING o.*
    )
    SELECT 'callback'::TEXT, c.workspace_id, NULL::TEXT, c.id, c.url, w.signing_secret,
           c.method, convert_to(c.body, 'UTF8'), c.attempts, c.first_attempt_at
    FROM claimed c JOIN workspaces w ON w.id = c.workspace_id;
END
$$;

CREATE FUNCTION cs_outbox_counts()
RETURNS TABLE (status TEXT, n BIGINT) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status;
$$;

CREATE FUNCTION cs_active_audio_streams()
RETURNS SETOF audio_streams LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM audio_streams WHERE status IN ('connecting', 'in-progress') ORDER BY created_at;
$$;

DO $$
DECLARE
    f TEXT;
BEGIN
    FOREACH f IN ARRAY ARRAY['cs_ensure_workspace(text, text, text, timestamptz)',
                             'cs_key_by_hash(bytea)', 'cs_stream_token_by_hash(bytea)',
                             'cs_session_by_hash(bytea)', 'cs_delete_session(bytea)',
                             'cs_claim_deliveries(timestamptz, timestamptz, integer)',
                             'cs_outbox_counts()', 'cs_active_audio_streams()']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO callstream_app', f);
    END LOOP;
END
$$;
