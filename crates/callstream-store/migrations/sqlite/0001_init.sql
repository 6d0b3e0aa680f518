-- callstream's embedded schema. Timestamps are RFC 3339 text with milliseconds, UTC.

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    auth_id     TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

-- Keys are stored as the SHA-256 of the secret; the secret itself is never stored.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    kind          TEXT NOT NULL CHECK (kind IN ('api', 'runtime')),
    key_hash      BLOB NOT NULL UNIQUE,
    hint          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    revoked_at    TEXT
);

CREATE TABLE calls (
    id                       TEXT PRIMARY KEY,
    workspace_id             TEXT NOT NULL REFERENCES workspaces(id),
    phone                    TEXT NOT NULL,
    direction                TEXT NOT NULL,
    transport                TEXT NOT NULL,
    external_id              TEXT,
    status                   TEXT NOT NULL,
    live_conversation_token  TEXT NOT NULL UNIQUE,
    started_at               TEXT NOT NULL,
    ended_at                 TEXT,
    last_seq                 INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX calls_by_workspace ON calls (workspace_id, started_at DESC);
CREATE INDEX calls_by_external_id ON calls (workspace_id, external_id);

-- Final transcript turns only; partials live on the bus.
CREATE TABLE transcript_turns (
    call_id        TEXT NOT NULL REFERENCES calls(id),
    turn_id        TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    role           TEXT NOT NULL,
    text           TEXT NOT NULL,
    confidence     REAL,
    segment_start  REAL,
    segment_end    REAL,
    ts             TEXT NOT NULL,
    PRIMARY KEY (call_id, turn_id)
);

CREATE TABLE conversations (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    channel       TEXT NOT NULL,
    participants  TEXT NOT NULL,
    mode          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX conversations_by_workspace ON conversations (workspace_id, created_at DESC);
