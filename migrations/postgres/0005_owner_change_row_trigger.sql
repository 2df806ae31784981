-- Count owner changes with a row-level trigger that fires only when the owner changes.
-- The statement-level UPDATE trigger of migration 0003 ran for every statement that updated
-- rows. That includes every batch that rewrites a stored topic (INSERT ... ON CONFLICT DO
-- UPDATE) and every batch of access times. Each time it copied every updated row, old and new
-- versions, into transition tables and joined them, only to find, nearly always, that no owner
-- had changed. A row-level trigger's WHEN condition is checked in the executor, and the function
-- runs only for rows whose owner really changed (another principal took the topic over), which
-- is rare. It still sees the row as it was, even when another node wrote it a moment before,
-- so the counts stay exact.
DROP TRIGGER retained_count_owner_changes ON retained_messages;
DROP FUNCTION retained_count_owner_changes();

CREATE FUNCTION retained_count_owner_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retained_owner_counts AS c (owner, shard, messages)
        VALUES (NEW.owner, retained_count_shard(), 1), (OLD.owner, retained_count_shard(), -1)
        ON CONFLICT (owner, shard) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    RETURN NULL;
END $$;

CREATE TRIGGER retained_count_owner_change AFTER UPDATE OF owner ON retained_messages
    FOR EACH ROW WHEN (OLD.owner IS DISTINCT FROM NEW.owner)
    EXECUTE FUNCTION retained_count_owner_change();
