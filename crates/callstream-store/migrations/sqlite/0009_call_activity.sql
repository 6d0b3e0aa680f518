-- When a live call last had an event, as the gateway's nodes last recorded it (they record it
-- every few seconds, not per event). A call with no event for `call_stale_secs` is ended as
-- stale; NULL (a call older than this column) counts from `started_at`.
ALTER TABLE calls ADD COLUMN last_event_at TEXT;
CREATE INDEX calls_in_progress ON calls (status, last_event_at);
