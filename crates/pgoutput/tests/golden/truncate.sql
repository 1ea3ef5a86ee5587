-- TRUNCATE: the CASCADE and RESTART IDENTITY option bits, and several relations in one message.
CREATE TABLE parent (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
CREATE TABLE child (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    parent_id integer REFERENCES parent (id), name text);
CREATE TABLE audit_a (id bigserial PRIMARY KEY, line text);
CREATE TABLE audit_b (id bigserial PRIMARY KEY, line text);
CREATE PUBLICATION golden FOR TABLE parent, child, audit_a, audit_b;

-- golden:capture
INSERT INTO parent (name) VALUES ('p1');
INSERT INTO child (parent_id, name) VALUES (1, 'c1');
INSERT INTO audit_a (line) VALUES ('a');
INSERT INTO audit_b (line) VALUES ('b');
-- CASCADE: the child is truncated too and listed in the same message.
TRUNCATE parent CASCADE;
-- Two unrelated tables at once, with RESTART IDENTITY.
TRUNCATE audit_a, audit_b RESTART IDENTITY;
-- Both options.
INSERT INTO parent (name) VALUES ('p2');
TRUNCATE parent RESTART IDENTITY CASCADE;
