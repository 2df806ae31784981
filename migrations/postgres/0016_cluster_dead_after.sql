-- How long each node may be silent before the others take it for dead (--cluster-dead-after,
-- decision 014), written with its heartbeat, so that each node is judged by its own setting
-- and nodes need not agree on one. NULL: a release from before this migration, judged by
-- the 10 s all releases used until then. Releases before it never touch the column, so the
-- schema's compatibility row stays (decision 021).
ALTER TABLE cluster_nodes ADD COLUMN dead_after_ms INTEGER;
