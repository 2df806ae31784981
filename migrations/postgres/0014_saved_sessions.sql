-- Persistent sessions a node saved when it stopped, taken (read and deleted) when it starts
-- again (decision 024). `state` is the broker's own encoding of the session (subscriptions,
-- unacknowledged and queued messages); the store does not read it. `expires_at_ms` is NULL for
-- a session that never expires. Older releases never touch the table.
CREATE TABLE saved_sessions (
    client_id text PRIMARY KEY,
    creator text,
    expires_at_ms bigint,
    state bytea NOT NULL
);
