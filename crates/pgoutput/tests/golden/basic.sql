-- Inserts, updates and deletes on a table with a primary key (REPLICA IDENTITY DEFAULT).
CREATE TABLE customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text,
    score integer,
    active boolean NOT NULL DEFAULT true
);
CREATE PUBLICATION golden FOR TABLE customers;

-- golden:capture
INSERT INTO customers VALUES (1, 'ana', 'ana@example.com', 10, true);
-- One transaction, several rows (a multi-row insert is one statement, several messages).
INSERT INTO customers VALUES (2, 'bo', NULL, NULL, false), (3, 'cy', '', 0, true);
-- A non-key update: no old image is sent.
UPDATE customers SET score = score + 5 WHERE id = 1;
-- A key update: the old key is sent as a 'K' tuple.
UPDATE customers SET id = 20, name = 'bo (renamed)' WHERE id = 2;
-- A delete sends the old key ('K').
DELETE FROM customers WHERE id = 3;
-- Several statements in one transaction share one Begin/Commit.
BEGIN;
INSERT INTO customers VALUES (4, 'dee', 'dee@example.com', 1, true);
UPDATE customers SET email = 'new@example.com' WHERE id = 4;
DELETE FROM customers WHERE id = 4;
COMMIT;
