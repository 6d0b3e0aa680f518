-- Seed 004's audio streams: one row per stream, kept after it ends (the list shows ended
-- streams too), and found again at start-up while active so that a restarted gateway
-- reconnects them.
CREATE TABLE audio_streams (
    id                      TEXT PRIMARY KEY,        -- the stream_id, a UUID
    workspace_id            TEXT NOT NULL REFERENCES workspaces(id),
    call_id                 TEXT NOT NULL REFERENCES calls(id),
    service_url             TEXT NOT NULL,
    audio_track             TEXT NOT NULL,           -- inbound | outbound | both
    bidirectional           INTEGER NOT NULL,
    content_type            TEXT NOT NULL,           -- canonical, e.g. audio/x-l16;rate=8000
    l16_big_endian          INTEGER NOT NULL DEFAULT 0,
    stream_timeout_secs     INTEGER NOT NULL,
    status_callback_url     TEXT,
    status_callback_method  TEXT NOT NULL,           -- GET | POST
    extra_headers           TEXT NOT NULL DEFAULT '',
    status                  TEXT NOT NULL,           -- connecting | in-progress | stopped | dropped
    created_at              TEXT NOT NULL,
    start_time              TEXT,
    end_time                TEXT,
    end_reason              TEXT
);
CREATE INDEX audio_streams_by_call ON audio_streams (workspace_id, call_id, created_at);
CREATE INDEX audio_streams_by_status ON audio_streams (status);

-- The key that signs a workspace's status callbacks (Standard Webhooks, `whsec_…`), minted on
-- first use.
ALTER TABLE workspaces ADD COLUMN signing_secret TEXT;

-- Status callbacks (and any other request to a URL that is not a webhook endpoint), on the same
-- retry schedule as the webhook outbox.
CREATE TABLE callback_outbox (
    id                TEXT PRIMARY KEY,   -- msg_…, sent as webhook-id
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    url               TEXT NOT NULL,
    method            TEXT NOT NULL,      -- GET (fields in the query) | POST (form body)
    body              TEXT NOT NULL,      -- application/x-www-form-urlencoded
    kind              TEXT NOT NULL,      -- e.g. StartStream
    status            TEXT NOT NULL,      -- pending | delivered | abandoned
    attempts          INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    first_attempt_at  TEXT,
    next_attempt_at   TEXT NOT NULL,
    last_status       INTEGER,
    last_error        TEXT
);
CREATE INDEX callback_outbox_due ON callback_outbox (status, next_attempt_at);
