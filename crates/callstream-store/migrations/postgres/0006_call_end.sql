-- How a call ended: its terminal event's reason (`call.failed`'s, or `call.completed`'s when it
-- gave one), and that event as the native WebSocket carried it (canonical envelope JSON), so that
-- a client that connects after the end is told the same as one that watched it. NULL for a live
-- call, and for calls that ended before this column. The table's row-level security covers them.
ALTER TABLE calls ADD COLUMN end_reason TEXT;
ALTER TABLE calls ADD COLUMN end_event BYTEA;
