-- What a node of many hands on with a persistent session besides its subscriptions and queue
-- (decision 014): the QoS 2 exchanges left open (the packet ids its client sent that await
-- PUBREL, and the messages released to it that await PUBCOMP), in the broker's own encoding,
-- which the store does not read; and, written at a clean stop, the instant a Will waiting out
-- its delay is due, so that the node adopting the session publishes it then.
--
-- `exchanges` is written when the node lets the session go (a hand-over, a stop) and taken,
-- and cleared, by the next connection that resumes the session; it holds only while
-- `exchanges_at >= detached_at`. Older releases never touch the three columns (the schema's
-- compatibility row stays, decision 021), but they do write `detached_at` at a connection's
-- start and end: a session such a node resumed in between leaves exchanges that no longer
-- hold, and this condition drops them. Likewise `will_due_at` counts only for a session
-- that is not connected.
ALTER TABLE cluster_sessions
    ADD COLUMN exchanges bytea,
    ADD COLUMN exchanges_at timestamptz,
    ADD COLUMN will_due_at timestamptz;
