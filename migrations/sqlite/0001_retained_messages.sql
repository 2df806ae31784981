-- One row per topic: the retained message MQTT hands to every future subscriber.
-- SQLite compares TEXT bytewise (BINARY), the same order as Postgres' COLLATE "C".
CREATE TABLE retained_messages (
    topic            TEXT    PRIMARY KEY NOT NULL,
    payload          BLOB    NOT NULL,
    qos              INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
    -- JSON array of [key, value] pairs; NULL when the message has none.
    user_properties  TEXT,
    content_type     TEXT,
    response_topic   TEXT,
    correlation_data BLOB,
    payload_format   INTEGER NOT NULL DEFAULT 0 CHECK (payload_format IN (0, 1)),
    expires_at_ms    INTEGER,
    last_modified_ms INTEGER NOT NULL,
    last_accessed_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX retained_messages_expiry ON retained_messages (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
CREATE INDEX retained_messages_last_accessed ON retained_messages (last_accessed_ms);

CREATE TABLE retaind_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
