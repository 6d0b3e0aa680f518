-- Places on a call's connections whose number is limited across the cluster (seed 003: ten
-- live transcript sockets per call, whichever nodes they are on). Each is held by one
-- connection under a lease its node renews while the connection lives, so a node that dies
-- gives its places back when their leases run out.
CREATE TABLE connection_places (
    holder        TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    call_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX connection_places_by_call ON connection_places (workspace_id, call_id, kind);

ALTER TABLE connection_places ENABLE ROW LEVEL SECURITY;
ALTER TABLE connection_places FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON connection_places
    USING (workspace_id = (SELECT nullif(current_setting('app.workspace_id', true), '')))
    WITH CHECK (workspace_id = (SELECT nullif(current_setting('app.workspace_id', true), '')));
GRANT SELECT, INSERT, UPDATE, DELETE ON connection_places TO callstream_app;
