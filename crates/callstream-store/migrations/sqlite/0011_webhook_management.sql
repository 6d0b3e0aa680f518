-- Endpoint management (issue 18): a description, and the secret being rotated out, which keeps
-- signing beside the new one until `previous_secret_until`.
ALTER TABLE webhook_endpoints ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_until TEXT;
-- Since when every attempt to it has failed (cleared by a delivery): an endpoint failing for
-- `webhook_disable_after_failing_secs` is disabled.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since TEXT;

-- The delivery log: when each message was queued, and every attempt.
ALTER TABLE webhook_outbox ADD COLUMN created_at TEXT;
CREATE INDEX webhook_outbox_by_endpoint ON webhook_outbox (endpoint_id);
CREATE TABLE webhook_attempts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id   TEXT NOT NULL,
    endpoint_id    TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    attempted_at   TEXT NOT NULL,
    status_code    INTEGER,
    latency_ms     INTEGER NOT NULL,
    error_kind     TEXT,
    response_body  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_by_message ON webhook_attempts (endpoint_id, event_id, id);
