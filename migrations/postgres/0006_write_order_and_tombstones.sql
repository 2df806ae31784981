-- Per-topic write order that survives stalls and crosses nodes.
--
-- A write batch that the service gave up on (it answered 503 at its deadline) could still be
-- running in Postgres, for example waiting for a row lock, and commit minutes later over a newer
-- write that was acknowledged meanwhile. Every write now carries a ticket from this sequence,
-- taken when its statement starts, before it waits for any lock; a row is only replaced by a
-- write with a later ticket. A write that arrives with an earlier ticket has been superseded and
-- changes nothing. Sequences are not transactional, so tickets order the starts of statements
-- across every node, committed or not.
CREATE SEQUENCE retained_write_seq;

-- A delete leaves a tombstone: the row stays, marked deleted, with the ticket of the delete, so
-- that an older write of the same topic arriving late cannot bring the message back. Tombstones
-- are invisible to every read, count for no quota, and are removed by the expiry purge once no
-- write older than them can still be running (their expiry is the time of the delete).
ALTER TABLE retained_messages
    ADD COLUMN write_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;

-- The counts (migrations 0003-0005) count live messages only.
CREATE OR REPLACE FUNCTION retained_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE NOT deleted) THEN
        RETURN NULL;
    END IF;
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        SELECT owner, retained_count_shard(), count(*) FROM new_rows WHERE NOT deleted
        GROUP BY owner
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    UPDATE retained_total SET messages = messages + (SELECT count(*) FROM new_rows WHERE NOT deleted)
        WHERE shard = retained_count_shard();
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION retained_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM old_rows WHERE NOT deleted) THEN
        RETURN NULL;
    END IF;
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        SELECT owner, retained_count_shard(), -count(*) FROM old_rows WHERE NOT deleted
        GROUP BY owner
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    UPDATE retained_total SET messages = messages - (SELECT count(*) FROM old_rows WHERE NOT deleted)
        WHERE shard = retained_count_shard();
    RETURN NULL;
END $$;

-- A rewrite that changes the owner or turns a message into a tombstone (or back) moves one
-- count. Row-level, with a WHEN that lets the many rewrites that change neither skip it
-- (migration 0005 explains why not a statement-level trigger).
DROP TRIGGER retained_count_owner_change ON retained_messages;
DROP FUNCTION retained_count_owner_change();

CREATE FUNCTION retained_count_row_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        SELECT o, retained_count_shard(), d
        FROM (VALUES (OLD.owner, CASE WHEN OLD.deleted THEN 0 ELSE -1 END),
                     (NEW.owner, CASE WHEN NEW.deleted THEN 0 ELSE 1 END)) AS v(o, d)
        WHERE d <> 0
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    IF OLD.deleted <> NEW.deleted THEN
        UPDATE retained_total SET messages = messages + CASE WHEN NEW.deleted THEN -1 ELSE 1 END
            WHERE shard = retained_count_shard();
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER retained_count_row_change AFTER UPDATE OF owner, deleted ON retained_messages
    FOR EACH ROW
    WHEN (OLD.deleted IS DISTINCT FROM NEW.deleted
          OR (OLD.owner IS DISTINCT FROM NEW.owner AND NOT NEW.deleted))
    EXECUTE FUNCTION retained_count_row_change();
