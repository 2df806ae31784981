-- The oldest migration a release must know to run on this schema (decision 021). A release
-- that finds the database migrated past what it knows runs on it only if it knows this one,
-- and otherwise refuses to start (releases from before this migration refuse any newer
-- schema). A later migration that older releases would misread (a column they write dropped,
-- a meaning changed, a duty moved from a trigger into the service) sets it to its own number;
-- one they can run beside (a column or index added that they never touch) leaves it.
--
-- 10: a release of migration 10 or 11 runs correctly on this schema, beside newer nodes too:
-- migration 11's column is read only by the statement that sets it, and this table by the
-- releases that know it.
CREATE TABLE schema_compatibility (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    oldest_release_migration BIGINT NOT NULL
);
INSERT INTO schema_compatibility (oldest_release_migration) VALUES (10);
