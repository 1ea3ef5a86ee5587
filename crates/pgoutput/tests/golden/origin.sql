-- An Origin message: the writing session replays "as" a replication origin, the way a
-- subscriber's apply worker does.
CREATE TABLE replicated (id integer PRIMARY KEY, source text);
CREATE PUBLICATION golden FOR TABLE replicated;
-- Origins are cluster-wide: drop one an interrupted run left behind.
SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = 'golden_upstream';
SELECT pg_replication_origin_create('golden_upstream');

-- golden:capture
SELECT pg_replication_origin_session_setup('golden_upstream');
BEGIN;
-- The commit LSN and time on the "origin" server, carried by the Origin message.
SELECT pg_replication_origin_xact_setup('0/ABCDEF0', '2024-01-02 03:04:05+00');
INSERT INTO replicated VALUES (1, 'upstream');
COMMIT;
SELECT pg_replication_origin_session_reset();
-- A local transaction afterwards has no Origin message.
INSERT INTO replicated VALUES (2, 'local');
SELECT pg_replication_origin_drop('golden_upstream');
