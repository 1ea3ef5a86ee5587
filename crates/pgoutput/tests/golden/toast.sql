-- Unchanged TOASTed values ('u'): a long column stored out of line and uncompressed
-- (STORAGE EXTERNAL), then an update of another column.
CREATE TABLE documents (
    id integer PRIMARY KEY,
    title text NOT NULL,
    body text
);
ALTER TABLE documents ALTER COLUMN body SET STORAGE EXTERNAL;
-- The same with REPLICA IDENTITY FULL: the old row carries the real value, the new
-- row still says "unchanged".
CREATE TABLE documents_full (
    id integer PRIMARY KEY,
    title text NOT NULL,
    body text
);
ALTER TABLE documents_full ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE documents_full REPLICA IDENTITY FULL;
CREATE PUBLICATION golden FOR TABLE documents, documents_full;

-- golden:capture
-- 4000 bytes: above the 2 kB TOAST threshold, so the value goes out of line.
INSERT INTO documents VALUES (1, 'first', repeat('0123456789', 400));
-- body not touched: the new tuple says 'u' for it.
UPDATE documents SET title = 'first, retitled' WHERE id = 1;
-- body rewritten: the new tuple carries it in full.
UPDATE documents SET body = repeat('abcdefghij', 400) WHERE id = 1;
INSERT INTO documents_full VALUES (1, 'full', repeat('ABCDEFGHIJ', 400));
-- Old row ('O') has the whole body; the new row has 'u' for it.
UPDATE documents_full SET title = 'full, retitled' WHERE id = 1;
-- A delete under FULL sends the whole old row, body included.
DELETE FROM documents_full WHERE id = 1;
