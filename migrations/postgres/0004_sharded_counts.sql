-- Shard the message counts (migration 0003) by writing connection: with several write lanes,
-- and several nodes, every connection that added or removed messages updated the same counter
-- rows, so their statements waited for each other's commits. Now each connection updates the
-- shard of its backend pid; a count is the sum over its shards, and a shard may go negative
-- when another connection added the message. Existing counts move to shard 0.
-- ALTER TABLE locks each table until this migration commits, so no count changes meanwhile.
ALTER TABLE retained_owner_counts ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE retained_owner_counts ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE retained_owner_counts DROP CONSTRAINT retained_owner_counts_pkey;
ALTER TABLE retained_owner_counts ADD PRIMARY KEY (owner, shard);

-- Every shard exists from the start, so that locking them all (as a quota decision does, to
-- order itself after every connection that is adding messages) leaves none to appear later.
ALTER TABLE retained_total ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE retained_total DROP COLUMN only_row;
ALTER TABLE retained_total ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE retained_total ADD PRIMARY KEY (shard);
INSERT INTO retained_total (shard, messages) SELECT s, 0 FROM generate_series(1, 63) AS s;

CREATE FUNCTION retained_count_shard() RETURNS SMALLINT LANGUAGE sql STABLE AS
    'SELECT (pg_backend_pid() % 64)::smallint';

-- The triggers of migration 0003 keep calling these functions, now shard-aware.
CREATE OR REPLACE FUNCTION retained_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION retained_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION retained_count_owner_changes() RETURNS trigger LANGUAGE plpgsql AS $$
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
