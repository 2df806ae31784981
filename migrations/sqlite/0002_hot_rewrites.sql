-- The retention purge needs only the day of the last access. Indexing the day rather than the
-- exact time spares the index an update on most rewrites of a message.
ALTER TABLE retained_messages
    ADD COLUMN last_accessed_day INTEGER
    GENERATED ALWAYS AS (last_accessed_ms / 86400000) VIRTUAL;
DROP INDEX retained_messages_last_accessed;
CREATE INDEX retained_messages_last_accessed_day ON retained_messages (last_accessed_day);
