-- A conversation's messages, one row per message with its latest status; `payload` is the most
-- recent message.* payload exactly as ingested.
CREATE TABLE messages (
    conversation_id  TEXT NOT NULL REFERENCES conversations(id),
    message_id       TEXT NOT NULL,
    first_seq        INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL,
    direction        TEXT NOT NULL,
    text             TEXT,
    status           TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
);
