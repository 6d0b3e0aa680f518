-- Places on a call's connections whose number is limited (seed 003: ten live transcript sockets
-- per call), held by one connection each under a lease it renews while it lives. Embedded, one
-- process counts them in memory; this table serves the same contract for the conformance suite.
CREATE TABLE connection_places (
    holder        TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    call_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX connection_places_by_call ON connection_places (workspace_id, call_id, kind);
