-- The live nodes of a service running over NATS (issue 15, decision 014). Each node refreshes
-- its row every 2 s with the database's clock, so nodes' clocks never disagree; a row older
-- than 10 s is a dead node, whose client-id claims and announced interest a survivor removes.
-- Per-principal rates are divided by the number of live nodes.
CREATE TABLE cluster_nodes (
    node text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
