-- Webhook endpoints per workspace, and the durable outbox of deliveries. Outbox rows are
-- written in the same transaction as the events they carry, so an accepted event is never
-- lost to a crash before its webhooks are queued.
CREATE TABLE webhook_endpoints (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    url           TEXT NOT NULL,
    secret        TEXT NOT NULL,
    event_types   TEXT,            -- JSON array of event types; NULL means every type
    created_at    TEXT NOT NULL,
    disabled_at   TEXT,
    disabled_reason TEXT
);
CREATE INDEX webhook_endpoints_by_workspace ON webhook_endpoints (workspace_id);

CREATE TABLE webhook_outbox (
    endpoint_id       TEXT NOT NULL REFERENCES webhook_endpoints(id),
    event_id          TEXT NOT NULL,
    workspace_id      TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    payload           BLOB NOT NULL,  -- the canonical envelope JSON, byte for byte
    status            TEXT NOT NULL,  -- pending | delivered | abandoned
    attempts          INTEGER NOT NULL DEFAULT 0,
    first_attempt_at  TEXT,
    next_attempt_at   TEXT NOT NULL,
    last_status       INTEGER,
    last_error        TEXT,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_attempt_at);
