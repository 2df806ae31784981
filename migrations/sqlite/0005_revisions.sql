-- Revisions, as in Postgres' migration 0010. One process writes a SQLite file, so a batch's
-- revisions are its write ticket times 4096 plus the row's place in the batch, and commit order
-- is ticket order.
ALTER TABLE retained_messages ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE retained_messages ADD COLUMN writer_client TEXT;
ALTER TABLE retained_messages ADD COLUMN change_kind INTEGER NOT NULL DEFAULT 0;

-- Rows written before numbered in their write order; the next ticket's revisions come after.
UPDATE retained_messages SET revision = r.rn
FROM (SELECT topic, row_number() OVER (ORDER BY write_seq, topic) AS rn FROM retained_messages) r
WHERE retained_messages.topic = r.topic;
UPDATE retained_write_seq
SET value = max(value, (SELECT count(*) FROM retained_messages) / 4096 + 1);

CREATE TABLE retained_changes (
    revision INTEGER PRIMARY KEY,
    topic    TEXT NOT NULL
);
INSERT INTO retained_changes (revision, topic)
    SELECT revision, topic FROM retained_messages WHERE revision > 0;

-- The log follows the rows by itself: in-engine triggers cost less than a statement from the
-- service per row. A rewrite that changes the revision replaces the topic's entry; a purged row
-- takes its entry with it.
CREATE TRIGGER retained_changes_on_insert AFTER INSERT ON retained_messages
WHEN NEW.revision > 0
BEGIN
    INSERT INTO retained_changes (revision, topic) VALUES (NEW.revision, NEW.topic);
END;

CREATE TRIGGER retained_changes_on_update AFTER UPDATE OF revision ON retained_messages
WHEN NEW.revision <> OLD.revision
BEGIN
    DELETE FROM retained_changes WHERE revision = OLD.revision;
    INSERT INTO retained_changes (revision, topic) VALUES (NEW.revision, NEW.topic);
END;

CREATE TRIGGER retained_changes_on_delete AFTER DELETE ON retained_messages
BEGIN
    DELETE FROM retained_changes WHERE revision = OLD.revision;
END;

CREATE TABLE retained_compacted (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    revision INTEGER NOT NULL
);
INSERT INTO retained_compacted (only_row, revision) VALUES (1, 0);
