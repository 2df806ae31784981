-- Rewriting a retained message should not have to touch any index. Postgres can then keep the
-- new row version on the same page (a heap-only-tuple update): no index entries to add, less WAL,
-- less bloat. That needs every indexed column unchanged, and the exact access time changes on
-- every write. Retention is measured in years, so the purge only needs the day: index that.
ALTER TABLE retained_messages
    ADD COLUMN last_accessed_day INTEGER
    GENERATED ALWAYS AS ((last_accessed_ms / 86400000)::integer) STORED;
DROP INDEX retained_messages_last_accessed;
CREATE INDEX retained_messages_last_accessed_day ON retained_messages (last_accessed_day);

-- Leave room on each page for the next version of its rows, which in-page updates need.
ALTER TABLE retained_messages SET (fillfactor = 85);
