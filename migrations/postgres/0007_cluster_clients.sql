-- Which node holds each connected MQTT client id, when nodes run as one service over NATS
-- (issue 15, decision 014). A CONNECT claims its id with one upsert that takes a new
-- generation and keeps the previous holder, whom the claiming node then tells to close its
-- connection. Nodes compare what they hold with these rows every few seconds, so a notice lost
-- on the way still closes the stale connection.
CREATE SEQUENCE cluster_generation;

CREATE TABLE cluster_clients (
    client_id text PRIMARY KEY,
    node text NOT NULL,
    generation bigint NOT NULL,
    previous_node text,
    previous_generation bigint,
    connected_at timestamptz NOT NULL DEFAULT now()
);
