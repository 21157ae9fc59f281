-- Issue 13: what lets several nodes share one store (SQLite keeps the same tables so one code
-- path serves one node and many).

-- One lease per role ("jmafile", "archive", "retention"): only its holder acts. `fencing` is
-- bumped whenever the lease is taken, and every commit of the role carries it.
CREATE TABLE leaders (
    role           TEXT PRIMARY KEY,
    node           TEXT NOT NULL,
    fencing        INTEGER NOT NULL,
    acquired_ms    INTEGER NOT NULL,
    renewed_ms     INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL
);

-- The processes registered as nodes; two live instances of one node id are refused.
CREATE TABLE nodes (
    node           TEXT PRIMARY KEY,
    instance       TEXT NOT NULL,
    started_ms     INTEGER NOT NULL,
    seen_ms        INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    version        TEXT NOT NULL,
    pid            INTEGER NOT NULL
);

-- Requests booked on the account's budgets ("api", "data") by any node.
CREATE TABLE request_ledger (
    budget TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
);
CREATE INDEX request_ledger_by_time ON request_ledger (budget, at_ms);
