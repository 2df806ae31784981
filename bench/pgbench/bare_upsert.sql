-- The least a durable upsert of a retained message costs Postgres, for bench/million.sh: 100
-- new topics per transaction, each with a 256-byte payload, into a table with nothing but
-- its primary key (no change log, no counts, no access index), synchronous commit. Blocks of
-- 100 topics come from a sequence, so that every row is new, as in the 16-client store of
-- the million.
INSERT INTO bare_upsert (topic, payload) SELECT 'm/' || (b.n * 100 + g), '\xbf5ffee9064829fe64a12a3706d35722e3b49325467fef41cea4512c8742073f6358e26e9014166ff3cc5b7e1f41e108a7ef7c784b183b30cc4fb9940be7e46f5b36c80003a64688b6f2218f93eb2960632c3bb0343e33a351d43d1e94e9d3d3fb0674e19f4830e1424a88d5f26011e3699d3dbc7210e317346a355109afafee65b1422ef9c944271db91c49965487e6a4d0c949399a614678c4ddabe457b18601705f70ab5f3b25a171f2cece760da4b21d3a5e62540ea0ee061879ab39909cc64c9b70bfa969e65570354b8704a7abe7379ba0aa8bc9d23c8e1e68cad8ed1715d67d13f5abd56038ba7abb1a609be114f074ebe95e6d5d76fee02b89797e05'::bytea FROM (SELECT nextval('bare_upsert_block') AS n) AS b, generate_series(0, 99) AS g ON CONFLICT (topic) DO UPDATE SET payload = EXCLUDED.payload;
