-- Revisions (decision 018): every change to the retained set gets a number that orders it
-- service-wide, and a watch can follow the changes from any number on.
--
-- A batch's revisions are its transaction id times 4096 plus the row's place in the batch.
-- The transaction id is taken as the batch's statement starts, before it waits for any lock,
-- so it is also the batch's write ticket (it replaces retained_write_seq, whose tickets are all
-- smaller than any transaction id times 4096). A watcher reads only below the oldest
-- transaction still running, so a revision it has passed can never commit later.
ALTER TABLE retained_messages
    ADD COLUMN revision BIGINT NOT NULL DEFAULT 0,
    -- The MQTT client id, or 'HTTP', of the write; NULL for rows written before this.
    ADD COLUMN writer_client TEXT,
    -- What made a tombstone: 0 a write, 1 expiry, 2 the retention purge.
    ADD COLUMN change_kind SMALLINT NOT NULL DEFAULT 0;

-- Rows written before numbered in their write order, just below this transaction's range,
-- so that every later change has a higher revision. Their write ticket becomes that revision:
-- the old tickets came from a sequence that need not be below the transaction ids (a database
-- restored into a younger cluster keeps its sequence, while transaction ids start again), and
-- an old ticket above a new one would make every new write of the topic lose to the old row.
UPDATE retained_messages m SET revision = b.base - b.n + r.rn, write_seq = b.base - b.n + r.rn
FROM (SELECT topic, row_number() OVER (ORDER BY write_seq, topic) AS rn FROM retained_messages) r,
     (SELECT pg_current_xact_id()::text::int8 * 4096 AS base, count(*) AS n
      FROM retained_messages) b
WHERE m.topic = r.topic;

-- Which topic each revision changed. Watches read it in revision order and join the topic's
-- row, whose revision tells whether the entry is still its latest. A separate table, because an
-- index on the revision column would end the in-page (HOT) rewrites migration 0002 arranged.
-- Entries no longer any topic's latest are removed by maintenance.
CREATE TABLE retained_changes (
    revision BIGINT PRIMARY KEY,
    topic    TEXT COLLATE "C" NOT NULL
);
INSERT INTO retained_changes (revision, topic)
    SELECT revision, topic FROM retained_messages WHERE revision > 0;

-- The highest revision whose tombstone maintenance has removed: a watch resuming from below it
-- may have missed a delete, and must start over.
CREATE TABLE retained_compacted (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    revision BIGINT NOT NULL
);
INSERT INTO retained_compacted (revision) VALUES (0);
