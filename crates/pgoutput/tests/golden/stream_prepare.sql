-- A prepared transaction larger than logical_decoding_work_mem (64kB), with
-- proto_version=3 streaming=on two_phase=on: streamed blocks, then Stream Prepare,
-- then Commit Prepared.
CREATE TABLE bulk (id integer PRIMARY KEY, payload text NOT NULL);
CREATE PUBLICATION golden FOR TABLE bulk;

-- golden:capture
BEGIN;
INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, 600) g;
PREPARE TRANSACTION 'golden_big';
COMMIT PREPARED 'golden_big';
