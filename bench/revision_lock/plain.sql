-- A write batch as retaind's Postgres store makes one today: 100 rows upserted, each with a write ticket.
\set base random(1, 99900)
BEGIN;
INSERT INTO msgs (topic, payload, write_seq)
  SELECT 't/' || (:base + g), decode(repeat('ab', 128), 'hex'), nextval('wseq') FROM generate_series(1, 100) g
  ON CONFLICT (topic) DO UPDATE SET payload = EXCLUDED.payload, write_seq = EXCLUDED.write_seq
  WHERE msgs.write_seq < EXCLUDED.write_seq;
COMMIT;
