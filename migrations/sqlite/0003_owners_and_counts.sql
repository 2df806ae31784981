-- Who stored each retained message, and how many each owner and the whole service keep, so
-- that quotas on the number of retained messages can be checked without counting rows.
-- The owner is the name of the principal whose publish stored the message ('' when
-- authentication is off, and for messages stored before this migration).
ALTER TABLE retained_messages ADD COLUMN owner TEXT NOT NULL DEFAULT '';

CREATE TABLE retained_owner_counts (
    owner    TEXT PRIMARY KEY NOT NULL,
    messages INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE retained_total (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    messages INTEGER NOT NULL
);

INSERT INTO retained_total (only_row, messages) SELECT 1, count(*) FROM retained_messages;
INSERT INTO retained_owner_counts (owner, messages)
    SELECT owner, count(*) FROM retained_messages GROUP BY owner;

-- Row triggers run in-process here, so they cost little; they cover every path that adds or
-- removes rows, purges and manual SQL included.
CREATE TRIGGER retained_count_insert AFTER INSERT ON retained_messages
BEGIN
    -- Not INSERT OR IGNORE: a trigger's conflict clause gives way to the firing statement's.
    INSERT INTO retained_owner_counts (owner, messages) SELECT NEW.owner, 0
        WHERE NOT EXISTS (SELECT 1 FROM retained_owner_counts WHERE owner = NEW.owner);
    UPDATE retained_owner_counts SET messages = messages + 1 WHERE owner = NEW.owner;
    UPDATE retained_total SET messages = messages + 1;
END;

CREATE TRIGGER retained_count_delete AFTER DELETE ON retained_messages
BEGIN
    UPDATE retained_owner_counts SET messages = messages - 1 WHERE owner = OLD.owner;
    UPDATE retained_total SET messages = messages - 1;
END;

-- A rewrite by another principal moves the message to the new owner.
CREATE TRIGGER retained_count_owner_change AFTER UPDATE OF owner ON retained_messages
WHEN OLD.owner <> NEW.owner
BEGIN
    -- Not INSERT OR IGNORE: a trigger's conflict clause gives way to the firing statement's.
    INSERT INTO retained_owner_counts (owner, messages) SELECT NEW.owner, 0
        WHERE NOT EXISTS (SELECT 1 FROM retained_owner_counts WHERE owner = NEW.owner);
    UPDATE retained_owner_counts SET messages = messages + 1 WHERE owner = NEW.owner;
    UPDATE retained_owner_counts SET messages = messages - 1 WHERE owner = OLD.owner;
END;
