-- The revision a write replaced, set by the write from the row it locked, so that the same
-- statement can drop that revision's entry from retained_changes without first reading the
-- rows it is about to replace (about a tenth of what Postgres spent on a stored message,
-- docs/decisions/020-a-million-retained-messages.md). Meaningful only to the statement that
-- set it; NULL where a write inserted the row. Not indexed: rewrites stay in-page (HOT,
-- migration 0002).
ALTER TABLE retained_messages ADD COLUMN replaced_revision BIGINT;
