-- A streamed transaction (proto_version=2 streaming=on, logical_decoding_work_mem=64kB,
-- decoded while it runs) with a rolled-back subtransaction, then rolled back as a whole:
-- a Stream Abort for the subtransaction (xid ≠ subxid), then one for the whole
-- transaction (xid = subxid).
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
INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, 500) g;
SAVEPOINT doomed;
INSERT INTO bulk SELECT g, 'doomed ' || g FROM generate_series(501, 1000) g;
-- Let the walsender stream both (they exceed 64kB) before the rollbacks.
SELECT golden_wait_sent();
ROLLBACK TO SAVEPOINT doomed;
INSERT INTO bulk SELECT g, 'after ' || g FROM generate_series(1001, 1010) g;
SELECT golden_wait_sent();
ROLLBACK;
-- A small committed transaction afterwards.
INSERT INTO bulk VALUES (1, 'survivor');
