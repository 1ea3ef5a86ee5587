-- Logical decoding messages (pg_logical_emit_message), transactional or not; needs messages=true.
CREATE TABLE events (id integer PRIMARY KEY, kind text);
CREATE PUBLICATION golden FOR TABLE events;

-- golden:capture
-- Non-transactional: delivered at once, outside any Begin/Commit.
SELECT pg_logical_emit_message(false, 'heartbeat', 'tick 1');
-- Transactional, inside a transaction with a change: between Begin and Commit.
BEGIN;
INSERT INTO events VALUES (1, 'created');
SELECT pg_logical_emit_message(true, 'audit', 'event 1 created');
COMMIT;
-- A transactional message alone is enough for a Begin/Commit pair.
SELECT pg_logical_emit_message(true, 'audit', 'alone');
-- Binary content (bytea overload) with a zero byte, and an empty prefix-free payload.
SELECT pg_logical_emit_message(false, 'binary', '\x00ff10'::bytea);
SELECT pg_logical_emit_message(false, 'empty', '');
-- In a transaction that rolls back, the non-transactional message is still delivered,
-- the transactional one is not.
BEGIN;
INSERT INTO events VALUES (2, 'lost');
SELECT pg_logical_emit_message(false, 'heartbeat', 'tick 2 (rolled back transaction)');
SELECT pg_logical_emit_message(true, 'audit', 'never delivered');
ROLLBACK;
