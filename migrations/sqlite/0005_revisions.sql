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

CREATE TABLE retained_compacted (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    revision INTEGER NOT NULL
);
INSERT INTO retained_compacted (only_row, revision) VALUES (1, 0);
