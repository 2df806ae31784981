-- The same batch taking its revisions from a one-row counter first (decision 018), held to commit.
\set base random(1, 99900)
BEGIN;
UPDATE rev SET n = n + 100 WHERE id = 1 RETURNING n AS top \gset
INSERT INTO msgs (topic, payload, write_seq, revision)
  SELECT 't/' || (:base + g), decode(repeat('ab', 128), 'hex'), nextval('wseq'), :top - 100 + g FROM generate_series(1, 100) g
  ON CONFLICT (topic) DO UPDATE SET payload = EXCLUDED.payload, write_seq = EXCLUDED.write_seq, revision = EXCLUDED.revision
  WHERE msgs.write_seq < EXCLUDED.write_seq;
COMMIT;
