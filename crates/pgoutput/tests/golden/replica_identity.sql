-- What old-row data each REPLICA IDENTITY setting sends for UPDATE and DELETE.
CREATE TABLE ri_default (id integer PRIMARY KEY, code text NOT NULL, note text);
CREATE TABLE ri_full (id integer PRIMARY KEY, code text NOT NULL, note text);
ALTER TABLE ri_full REPLICA IDENTITY FULL;
CREATE TABLE ri_index (id integer PRIMARY KEY, code text NOT NULL, note text);
CREATE UNIQUE INDEX ri_index_code ON ri_index (code);
ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_code;
CREATE TABLE ri_nothing (id integer PRIMARY KEY, code text NOT NULL, note text);
ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
CREATE PUBLICATION golden FOR TABLE ri_default, ri_full, ri_index;
-- A table without replica identity cannot be in a publication that publishes
-- UPDATE or DELETE without those statements failing; this one publishes inserts
-- and updates only, so its UPDATE fails and its DELETE succeeds unpublished.
CREATE PUBLICATION golden_nothing FOR TABLE ri_nothing WITH (publish = 'insert, update');

-- golden:capture
INSERT INTO ri_default VALUES (1, 'd1', 'x'), (2, 'd2', 'x');
INSERT INTO ri_full VALUES (1, 'f1', 'x'), (2, 'f2', 'x');
INSERT INTO ri_index VALUES (1, 'i1', 'x'), (2, 'i2', 'x');
INSERT INTO ri_nothing VALUES (1, 'n1', 'x'), (2, 'n2', 'x');

-- DEFAULT: no old image unless the key changes, then 'K' with the key column only.
UPDATE ri_default SET note = 'y' WHERE id = 1;
UPDATE ri_default SET id = 10 WHERE id = 1;
DELETE FROM ri_default WHERE id = 2;

-- FULL: 'O' with every column, for every update and delete.
UPDATE ri_full SET note = 'y' WHERE id = 1;
DELETE FROM ri_full WHERE id = 2;

-- USING INDEX: like DEFAULT but keyed on the index column (code), not the primary key.
UPDATE ri_index SET note = 'y' WHERE id = 1;
UPDATE ri_index SET id = 10 WHERE id = 1;
UPDATE ri_index SET code = 'i1-new' WHERE id = 10;
DELETE FROM ri_index WHERE id = 2;

-- NOTHING: PostgreSQL rejects the UPDATE on the source because the table publishes
-- updates without a replica identity:
--   ERROR:  cannot update table "ri_nothing" because it does not have a replica identity and publishes updates
--   HINT:  To enable updating the table, set REPLICA IDENTITY using ALTER TABLE.
\set ON_ERROR_STOP 0
UPDATE ri_nothing SET note = 'y' WHERE id = 1;
\set ON_ERROR_STOP 1
-- The DELETE succeeds (its publication does not publish deletes) and nothing is sent.
DELETE FROM ri_nothing WHERE id = 2;
-- A last insert shows the stream went on.
INSERT INTO ri_nothing VALUES (3, 'n3', 'x');
