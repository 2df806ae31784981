-- One row per topic: the retained message MQTT hands to every future subscriber.
-- COLLATE "C" makes ORDER BY and keyset pagination follow byte order, the same order SQLite uses,
-- and keeps them independent of the server's locale.
CREATE TABLE retained_messages (
    topic            TEXT COLLATE "C" PRIMARY KEY,
    payload          BYTEA    NOT NULL,
    qos              SMALLINT NOT NULL CHECK (qos BETWEEN 0 AND 2),
    -- JSON array of [key, value] pairs; NULL when the message has none.
    user_properties  TEXT,
    content_type     TEXT,
    response_topic   TEXT,
    correlation_data BYTEA,
    payload_format   SMALLINT NOT NULL DEFAULT 0 CHECK (payload_format IN (0, 1)),
    expires_at_ms    BIGINT,
    last_modified_ms BIGINT   NOT NULL,
    last_accessed_ms BIGINT   NOT NULL
);

CREATE INDEX retained_messages_expiry ON retained_messages (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
CREATE INDEX retained_messages_last_accessed ON retained_messages (last_accessed_ms);

-- Small service-wide values every node must agree on, such as the pagination-token key.
CREATE TABLE retaind_meta (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
