-- Per-topic write order and tombstones, as in Postgres' migration 0006: every write carries a
-- ticket, taken when its transaction starts; a row is only replaced by a write with a later
-- ticket, and a delete leaves a tombstone (a row marked deleted, invisible to reads, counted
-- for no quota) until the expiry purge removes it. One process writes a SQLite file, through one
-- connection, so its writes already commit in order; the tickets keep the two stores' rules
-- the same.
ALTER TABLE retained_messages ADD COLUMN write_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE retained_messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;

CREATE TABLE retained_write_seq (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    value    INTEGER NOT NULL
);
INSERT INTO retained_write_seq (only_row, value) VALUES (1, 0);

-- The counts (migration 0003) count live messages only.
DROP TRIGGER retained_count_insert;
DROP TRIGGER retained_count_delete;
DROP TRIGGER retained_count_owner_change;

CREATE TRIGGER retained_count_insert AFTER INSERT ON retained_messages WHEN NOT NEW.deleted
BEGIN
    -- Not INSERT OR IGNORE: a trigger's conflict clause gives way to the firing statement's.
    INSERT INTO retained_owner_counts (owner, messages) SELECT NEW.owner, 0
        WHERE NOT EXISTS (SELECT 1 FROM retained_owner_counts WHERE owner = NEW.owner);
    UPDATE retained_owner_counts SET messages = messages + 1 WHERE owner = NEW.owner;
    UPDATE retained_total SET messages = messages + 1;
END;

CREATE TRIGGER retained_count_delete AFTER DELETE ON retained_messages WHEN NOT OLD.deleted
BEGIN
    UPDATE retained_owner_counts SET messages = messages - 1 WHERE owner = OLD.owner;
    UPDATE retained_total SET messages = messages - 1;
END;

-- A rewrite by another principal moves the message to the new owner.
CREATE TRIGGER retained_count_owner_change AFTER UPDATE OF owner ON retained_messages
WHEN OLD.owner <> NEW.owner AND NOT OLD.deleted AND NOT NEW.deleted
BEGIN
    INSERT INTO retained_owner_counts (owner, messages) SELECT NEW.owner, 0
        WHERE NOT EXISTS (SELECT 1 FROM retained_owner_counts WHERE owner = NEW.owner);
    UPDATE retained_owner_counts SET messages = messages + 1 WHERE owner = NEW.owner;
    UPDATE retained_owner_counts SET messages = messages - 1 WHERE owner = OLD.owner;
END;

-- A message turned into a tombstone, or a tombstone brought back to life by a put.
CREATE TRIGGER retained_count_tombstone AFTER UPDATE OF deleted ON retained_messages
WHEN NOT OLD.deleted AND NEW.deleted
BEGIN
    UPDATE retained_owner_counts SET messages = messages - 1 WHERE owner = OLD.owner;
    UPDATE retained_total SET messages = messages - 1;
END;

CREATE TRIGGER retained_count_revival AFTER UPDATE OF deleted ON retained_messages
WHEN OLD.deleted AND NOT NEW.deleted
BEGIN
    INSERT INTO retained_owner_counts (owner, messages) SELECT NEW.owner, 0
        WHERE NOT EXISTS (SELECT 1 FROM retained_owner_counts WHERE owner = NEW.owner);
    UPDATE retained_owner_counts SET messages = messages + 1 WHERE owner = NEW.owner;
    UPDATE retained_total SET messages = messages + 1;
END;
