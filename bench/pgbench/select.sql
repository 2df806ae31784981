-- The baseline for a get: one point select per transaction, the columns and expiry condition
-- retaind's read batch uses (src/store/postgres.rs), on a random topic among the 100,000.
-- :now_ms is set once per run with -D (retaind passes its clock; nothing here expires).
\set n random(0, 99999)
SELECT topic, payload, qos, user_properties, content_type, response_topic, correlation_data, payload_format, expires_at_ms, last_modified_ms, last_accessed_ms FROM retained_messages WHERE topic = 'bench/t/' || :n AND (expires_at_ms IS NULL OR expires_at_ms > :now_ms);
