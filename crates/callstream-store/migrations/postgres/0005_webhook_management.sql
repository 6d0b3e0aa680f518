-- Endpoint management (issue 18): a description, and the secret being rotated out, which keeps
-- signing beside the new one until `previous_secret_until`.
ALTER TABLE webhook_endpoints ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_until TIMESTAMPTZ;
-- Since when every attempt to it has failed (cleared by a delivery): an endpoint failing for
-- `webhook_disable_after_failing_secs` is disabled.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since TIMESTAMPTZ;

-- The delivery log: when each message was queued (and a cursor over them), and every attempt.
ALTER TABLE webhook_outbox ADD COLUMN created_at TIMESTAMPTZ;
ALTER TABLE webhook_outbox ADD COLUMN id BIGSERIAL;
CREATE INDEX webhook_outbox_by_endpoint ON webhook_outbox (endpoint_id, id);
GRANT USAGE ON SEQUENCE webhook_outbox_id_seq TO callstream_app;
CREATE TABLE webhook_attempts (
    id             BIGSERIAL PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    endpoint_id    TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    attempted_at   TIMESTAMPTZ NOT NULL,
    status_code    INTEGER,
    latency_ms     BIGINT NOT NULL,
    error_kind     TEXT,
    response_body  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_by_message ON webhook_attempts (endpoint_id, event_id, id);
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON webhook_attempts
    USING (workspace_id = (SELECT nullif(current_setting('app.workspace_id', true), '')))
    WITH CHECK (workspace_id = (SELECT nullif(current_setting('app.workspace_id', true), '')));
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_attempts TO callstream_app;
GRANT USAGE ON SEQUENCE webhook_attempts_id_seq TO callstream_app;

-- Claiming due deliveries now skips disabled endpoints (their rows wait, pending, until the
-- endpoint is enabled again) and the endpoints and workspaces a worker has enough requests in
-- flight to, and answers the previous secret while it still signs.
DROP FUNCTION cs_claim_deliveries(timestamptz, timestamptz, integer);
CREATE FUNCTION cs_claim_deliveries(p_now TIMESTAMPTZ, p_lease_until TIMESTAMPTZ, p_limit INTEGER,
                                    p_skip_endpoints TEXT[], p_skip_workspaces TEXT[])
RETURNS TABLE (kind TEXT, workspace_id TEXT, endpoint_id TEXT, message_id TEXT, url TEXT,
               secret TEXT, previous_secret TEXT, method TEXT, payload BYTEA, attempts INTEGER,
               first_attempt_at TIMESTAMPTZ)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT o.endpoint_id AS e, o.event_id AS m FROM webhook_outbox o
        JOIN webhook_endpoints en ON en.id = o.endpoint_id AND en.disabled_at IS NULL
        WHERE o.status = 'pending' AND o.next_attempt_at <= p_now
          AND NOT (o.endpoint_id = ANY (p_skip_endpoints))
          AND NOT (o.workspace_id = ANY (p_skip_workspaces))
        ORDER BY o.next_attempt_at LIMIT p_limit FOR UPDATE OF o SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_outbox o SET next_attempt_at = p_lease_until
        FROM due WHERE o.endpoint_id = due.e AND o.event_id = due.m
        RETURNING o.*
    )
    SELECT 'webhook'::TEXT, c.workspace_id, c.endpoint_id, c.event_id, e.url, e.secret,
           CASE WHEN e.previous_secret_until > p_now THEN e.previous_secret END,
           'POST'::TEXT, c.payload, c.attempts, c.first_attempt_at
    FROM claimed c JOIN webhook_endpoints e ON e.id = c.endpoint_id;

    RETURN QUERY
    WITH due AS (
        SELECT o.id AS i FROM callback_outbox o
        WHERE o.status = 'pending' AND o.next_attempt_at <= p_now
          AND NOT (o.workspace_id = ANY (p_skip_workspaces))
        ORDER BY o.next_attempt_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE callback_outbox o SET next_attempt_at = p_lease_until
        FROM due WHERE o.id = due.i
        RETURNING o.*
    )
    SELECT 'callback'::TEXT, c.workspace_id, NULL::TEXT, c.id, c.url, w.signing_secret,
           NULL::TEXT, c.method, convert_to(c.body, 'UTF8'), c.attempts, c.first_attempt_at
    FROM claimed c JOIN workspaces w ON w.id = c.workspace_id;
END
$$;
REVOKE ALL ON FUNCTION cs_claim_deliveries(timestamptz, timestamptz, integer, text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cs_claim_deliveries(timestamptz, timestamptz, integer, text[], text[]) TO callstream_app;

-- Delivered and given-up messages (with their logs) and status callbacks queued before
-- `p_before`, in every workspace: a function of the owner's, answering only a count.
CREATE FUNCTION cs_prune_webhook_messages(p_before TIMESTAMPTZ)
RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    webhooks BIGINT;
    callbacks BIGINT;
BEGIN
    DELETE FROM webhook_attempts a USING webhook_outbox o
    WHERE a.endpoint_id = o.endpoint_id AND a.event_id = o.event_id
      AND o.status IN ('delivered', 'abandoned') AND COALESCE(o.created_at, o.next_attempt_at) < p_before;
    DELETE FROM webhook_outbox
    WHERE status IN ('delivered', 'abandoned') AND COALESCE(created_at, next_attempt_at) < p_before;
    GET DIAGNOSTICS webhooks = ROW_COUNT;
    DELETE FROM callback_outbox WHERE status IN ('delivered', 'abandoned') AND created_at < p_before;
    GET DIAGNOSTICS callbacks = ROW_COUNT;
    RETURN webhooks + callbacks;
END
$$;
REVOKE ALL ON FUNCTION cs_prune_webhook_messages(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cs_prune_webhook_messages(timestamptz) TO callstream_app;
