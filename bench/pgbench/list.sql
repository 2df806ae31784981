-- The baseline for the first page of a list: the query retaind runs for it (src/store/postgres.rs),
-- 50 rows plus the one that tells whether another page follows. No target; for reference.
SELECT topic, octet_length(payload)::int8 AS payload_size, qos, last_modified_ms FROM retained_messages WHERE expires_at_ms IS NULL OR expires_at_ms > :now_ms ORDER BY topic LIMIT 51;
