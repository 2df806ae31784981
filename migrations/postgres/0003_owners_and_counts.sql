-- Who stored each retained message, and how many each owner and the whole service keep, so
-- that quotas on the number of retained messages can be checked without counting rows.
-- The owner is the name of the principal whose publish stored the message ('' when
-- authentication is off, and for messages stored before this migration).
ALTER TABLE retained_messages ADD COLUMN owner TEXT COLLATE "C" NOT NULL DEFAULT '';

CREATE TABLE retained_owner_counts (
    owner    TEXT COLLATE "C" PRIMARY KEY,
    messages BIGINT NOT NULL
);
-- One row. Every change to the number of messages updates it, so it doubles as the lock that
-- orders quota decisions across nodes.
CREATE TABLE retained_total (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    messages BIGINT NOT NULL
);

INSERT INTO retained_total (messages) SELECT count(*) FROM retained_messages;
INSERT INTO retained_owner_counts (owner, messages)
    SELECT owner, count(*) FROM retained_messages GROUP BY owner;

-- Statement-level triggers with transition tables: one run per statement (a group commit is one
-- statement), whatever the number of rows, and they see what really happened, inserted or
-- updated, even when another node raced for the same topic. Every path that adds or removes
-- rows is covered, purges and manual SQL included.
CREATE FUNCTION retained_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows) THEN
        RETURN NULL;
    END IF;
    INSERT INTO retained_owner_counts AS c (owner, messages)
        SELECT owner, count(*) FROM new_rows GROUP BY owner
        ON CONFLICT (owner) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    UPDATE retained_total SET messages = messages + (SELECT count(*) FROM new_rows);
    RETURN NULL;
END $$;

CREATE FUNCTION retained_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM old_rows) THEN
        RETURN NULL;
    END IF;
    UPDATE retained_owner_counts AS c SET messages = c.messages - d.n
        FROM (SELECT owner, count(*) AS n FROM old_rows GROUP BY owner) AS d
        WHERE c.owner = d.owner;
    UPDATE retained_total SET messages = messages - (SELECT count(*) FROM old_rows);
    RETURN NULL;
END $$;

-- A rewrite by another principal moves the message to the new owner; the total is unchanged.
CREATE FUNCTION retained_count_owner_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retained_owner_counts AS c (owner, messages)
        SELECT owner, sum(delta) FROM (
            SELECT n.owner, 1 AS delta FROM new_rows n JOIN old_rows o USING (topic)
                WHERE n.owner <> o.owner
            UNION ALL
            SELECT o.owner, -1 FROM new_rows n JOIN old_rows o USING (topic)
                WHERE n.owner <> o.owner
        ) AS moved GROUP BY owner
        ON CONFLICT (owner) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    RETURN NULL;
END $$;

CREATE TRIGGER retained_count_inserts AFTER INSERT ON retained_messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION retained_count_inserts();
CREATE TRIGGER retained_count_deletes AFTER DELETE ON retained_messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION retained_count_deletes();
CREATE TRIGGER retained_count_owner_changes AFTER UPDATE ON retained_messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION retained_count_owner_changes();
