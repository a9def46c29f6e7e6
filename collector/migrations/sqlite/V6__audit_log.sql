-- The audit log: one row per admin change, device enrolment and server
-- decision, hash-chained (see edgeml_client::wire::audit). audit_head holds
-- the newest entry's position and hash, written in the append's
-- transaction: removing rows from the log's end without rewinding it is
-- caught. The triggers refuse changes through SQL; they stop mistakes, not
-- someone who drops them, and the chain is what catches that.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    operator TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    key_ids TEXT NOT NULL,
    details TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
