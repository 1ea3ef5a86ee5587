-- Two-phase commit (proto_version=3 two_phase=on, slot created with --two-phase):
-- Begin Prepare … Prepare at PREPARE TRANSACTION, then Commit Prepared or Rollback Prepared.
-- Needs max_prepared_transactions > 0 on the server.
CREATE TABLE accounts (id integer PRIMARY KEY, balance numeric NOT NULL);
CREATE PUBLICATION golden FOR TABLE accounts;
INSERT INTO accounts VALUES (1, 100), (2, 100);

-- golden:capture
BEGIN;
UPDATE accounts SET balance = balance - 10 WHERE id = 1;
UPDATE accounts SET balance = balance + 10 WHERE id = 2;
PREPARE TRANSACTION 'golden_transfer';
COMMIT PREPARED 'golden_transfer';
BEGIN;
INSERT INTO accounts VALUES (3, 0);
PREPARE TRANSACTION 'golden_cancelled';
ROLLBACK PREPARED 'golden_cancelled';
