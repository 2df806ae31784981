-- The version of the frames each node sends its publishes to the others in (decision 014), so
-- that a node can tell, during a rolling upgrade, which live nodes run a release whose live
-- messages it drops and which drop its own. NULL: a release from before this migration, whose
-- version is not recorded. Releases before it never touch the column (their heartbeat names
-- only the node), so the schema's compatibility row stays (decision 021).
ALTER TABLE cluster_nodes ADD COLUMN frame_version SMALLINT;
