-- A transaction larger than logical_decoding_work_mem (64kB for the walsender, see
-- captures.txt) streamed with proto_version=2 streaming=on while it runs, then
-- committed: blocks of Stream Start … Stream Stop, a small transaction committed by
-- another session in between (plain Begin … Commit), then one Stream Commit.
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE TABLE bulk (id integer PRIMARY KEY, payload text NOT NULL);
CREATE PUBLICATION golden FOR TABLE bulk;
-- Waits until the walsender of this database's slot (record.sh names it after the
-- database) has sent everything written so far,
-- including this session's uncommitted changes (pg_switch_wal flushes them to disk,
-- where the walsender can read them).
CREATE FUNCTION golden_wait_sent() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    target pg_lsn := pg_switch_wal();
    deadline timestamptz := clock_timestamp() + interval '60 seconds';
BEGIN
    WHILE coalesce((SELECT max(r.sent_lsn) FROM pg_stat_replication r
                    JOIN pg_replication_slots s ON s.active_pid = r.pid
                    WHERE s.slot_name = current_database()), '0/0') < target LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'walsender of slot % did not reach % within 60 s', current_database(), target;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

-- golden:capture
BEGIN;
INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, 600) g;
-- A released subtransaction: its changes carry the subtransaction's xid inside the blocks.
SAVEPOINT inner_work;
INSERT INTO bulk SELECT g, 'sub ' || g FROM generate_series(601, 700) g;
RELEASE SAVEPOINT inner_work;
SELECT golden_wait_sent();
-- Another session commits a small transaction while this one is still open.
SELECT dblink_exec(
    format('dbname=%s host=%s port=%s', current_database(),
           split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port')),
    'INSERT INTO bulk VALUES (0, ''concurrent'')');
SELECT golden_wait_sent();
UPDATE bulk SET payload = 'updated' WHERE id BETWEEN 1 AND 10;
COMMIT;
