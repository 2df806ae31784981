-- The message counts and the change log are kept by the store's one writer, in the same
-- transaction as the rows, rather than by triggers (src/store/sqlite_books.rs).
--
-- A statement that fires a trigger may change several rows, so SQLite opens a statement
-- journal for it and copies every page it is about to change into that journal first. With
-- five triggers on each stored message (a count, an owner's count, a change-log entry, and the
-- entry it replaces) that copying and the triggers' own programs took about a third of the CPU
-- per message stored (issue 18). The triggers were cheaper than a statement from the service
-- only while each statement crossed threads (sqlx); the writer thread runs statements in
-- place, and settles the counts once per batch rather than once per row.
DROP TRIGGER retained_count_insert;
DROP TRIGGER retained_count_delete;
DROP TRIGGER retained_count_owner_change;
DROP TRIGGER retained_count_tombstone;
DROP TRIGGER retained_count_revival;
DROP TRIGGER retained_changes_on_insert;
DROP TRIGGER retained_changes_on_update;
DROP TRIGGER retained_changes_on_delete;
