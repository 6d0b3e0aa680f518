-- When a live call last had an event, as the gateway's nodes last recorded it (they record it
-- every few seconds, not per event). A call with no event for `call_stale_secs` is ended as
-- stale; NULL (a call older than this column) counts from `started_at`.
ALTER TABLE calls ADD COLUMN last_event_at TIMESTAMPTZ;
CREATE INDEX calls_in_progress ON calls (last_event_at) WHERE status = 'in_progress';

-- The live calls of every workspace with no event since `p_before`, for the sweep that ends
-- them: across workspaces, so a function of the owner's, answering only ids.
CREATE FUNCTION cs_stale_calls(p_before TIMESTAMPTZ, p_limit INTEGER)
RETURNS TABLE (workspace_id TEXT, id TEXT) LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    SELECT c.workspace_id, c.id FROM calls c
    WHERE c.status = 'in_progress' AND COALESCE(c.last_event_at, c.started_at) < p_before
    ORDER BY COALESCE(c.last_event_at, c.started_at) LIMIT p_limit;
$$;
REVOKE ALL ON FUNCTION cs_stale_calls(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cs_stale_calls(timestamptz, integer) TO callstream_app;
