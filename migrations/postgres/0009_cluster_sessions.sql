-- Persistent sessions and Wills of a service running over NATS (issue 15, decision 014), so
-- that they survive the node their client was connected to. A row exists for every session
-- that outlives its connection (MQTT 3.1.1 clean session 0, MQTT 5 session expiry > 0) and
-- for every connection with a Will. `node` is the node that holds the session: a live node's
-- row in cluster_nodes, or else a survivor adopts the session in the same transaction that
-- finds the node gone. Subscriptions and the Will are written through before SUBACK and
-- CONNACK; the messages queued for a session whose client is away are rows of
-- cluster_session_queue, in order.
CREATE TABLE cluster_sessions (
    client_id text PRIMARY KEY,
    node text NOT NULL,
    creator text,
    expiry_secs bigint NOT NULL,
    connected boolean NOT NULL,
    detached_at timestamptz,
    subscriptions jsonb NOT NULL DEFAULT '[]',
    will bytea,
    will_expiry_secs bigint,
    will_delay_secs bigint,
    will_owner text,
    will_owner_max bigint
);

CREATE INDEX cluster_sessions_node ON cluster_sessions (node);

CREATE TABLE cluster_session_queue (
    client_id text NOT NULL,
    seq bigserial,
    frame bytea NOT NULL,
    qos smallint NOT NULL,
    retain boolean NOT NULL,
    subscription_ids integer[] NOT NULL,
    PRIMARY KEY (client_id, seq)
);
