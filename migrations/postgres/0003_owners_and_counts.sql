-- Who stored each retained message, and how many each owner and the whole service keep, so
-- that quotas on the number of retained messages can be checked without counting rows.
-- The owner is the name of the principal whose publish stored the message ('' when
-- authentication is off, and for messages stored before this migration).
ALTER TABLE retained_messages ADD COLUMN owner TEXT COLLATE "C" NOT NULL DEFAULT '';

-- The counts are split into shards, one per writing connection (by backend pid), so that
-- connections writing at once never wait for each other on a shared counter row; a count is the
-- sum over its shards, and a shard may go negative when another connection added the message.
CREATE TABLE retained_owner_counts (
    owner    TEXT COLLATE "C" NOT NULL,
    shard    SMALLINT NOT NULL,
    messages BIGINT NOT NULL,
    PRIMARY KEY (owner, shard)
);
-- Every shard exists from the start, so that locking them all (as a quota decision does, to
-- order itself after every connection that is adding messages) leaves none to appear later.
CREATE TABLE retained_total (
    shard    SMALLINT PRIMARY KEY,
    messages BIGINT NOT NULL
);
INSERT INTO retained_total (shard, messages) SELECT s, 0 FROM generate_series(0, 63) AS s;
UPDATE retained_total SET messages = (SELECT count(*) FROM retained_messages) WHERE shard = 0;
INSERT INTO retained_owner_counts (owner, shard, messages)
    SELECT owner, 0, count(*) FROM retained_messages GROUP BY owner;

-- Statement-level triggers with transition tables: one run per statement (a group commit is one
-- statement), whatever the number of rows, and they see what really happened, inserted or
-- updated, even when another node raced for the same topic. Every path that adds or removes
-- rows is covered, purges and manual SQL included.
CREATE FUNCTION retained_count_shard() RETURNS SMALLINT LANGUAGE sql STABLE AS
    'SELECT (pg_backend_pid() % 64)::smallint';

CREATE FUNCTION retained_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows) THEN
        RETURN NULL;
    END IF;
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        SELECT owner, retained_count_shard(), count(*) FROM new_rows GROUP BY owner
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    UPDATE retained_total SET messages = messages + (SELECT count(*) FROM new_rows)
        WHERE shard = retained_count_shard();
    RETURN NULL;
END $$;

CREATE FUNCTION retained_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM old_rows) THEN
        RETURN NULL;
    END IF;
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        SELECT owner, retained_count_shard(), -count(*) FROM old_rows GROUP BY owner
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    UPDATE retained_total SET messages = messages - (SELECT count(*) FROM old_rows)
        WHERE shard = retained_count_shard();
    RETURN NULL;
END $$;

-- A rewrite by another principal moves the message to the new owner; the total is unchanged.
CREATE FUNCTION retained_count_owner_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        SELECT owner, retained_count_shard(), sum(delta) FROM (
            SELECT n.owner, 1 AS delta FROM new_rows n JOIN old_rows o USING (topic)
                WHERE n.owner <> o.owner
            UNION ALL
            SELECT o.owner, -1 FROM new_rows n JOIN old_rows o USING (topic)
                WHERE n.owner <> o.owner
        ) AS moved GROUP BY owner
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
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
