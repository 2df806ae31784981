-- The oldest migration a release must know to run on this schema (decision 021). A release
-- that finds the database migrated past what it knows runs on it only if it knows this one,
-- and otherwise refuses to start (releases from before this migration refuse any newer
-- schema). A later migration that older releases would misread (a column they write dropped,
-- a meaning changed, a duty moved from a trigger into the service) sets it to its own number;
-- one they can run beside (a column or index added that they never touch) leaves it.
--
-- 6: migration 6 moved the counts and the change log from triggers into the writer, which a
-- release before it would not keep.
CREATE TABLE schema_compatibility (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1) DEFAULT 1,
    oldest_release_migration INTEGER NOT NULL
);
INSERT INTO schema_compatibility (oldest_release_migration) VALUES (6);
