-- jma-poller state on PostgreSQL, schema 2: what lets several nodes share one store, as
-- SQLite's schema 6 (migrations/20261201000006_cluster.sql).
-- Never edit this file once released: add a new, later-numbered migration instead.

-- One lease per role ("jmafile", "archive", "retention"): only its holder acts. `fencing` is
-- bumped whenever the lease is taken, and every commit of the role carries it.
CREATE TABLE leaders (
    role           TEXT PRIMARY KEY,
    node           TEXT NOT NULL,
    fencing        BIGINT NOT NULL,
    acquired_ms    BIGINT NOT NULL,
    renewed_ms     BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);

-- The processes registered as nodes; two live instances of one node id are refused.
CREATE TABLE nodes (
    node           TEXT PRIMARY KEY,
    instance       TEXT NOT NULL,
    started_ms     BIGINT NOT NULL,
    seen_ms        BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    version        TEXT NOT NULL,
    pid            BIGINT NOT NULL
);

-- Requests booked on the account's budgets ("api", "data") by any node.
CREATE TABLE request_ledger (
    budget TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);
CREATE INDEX request_ledger_by_time ON request_ledger (budget, at_ms);

-- Claims per node (`nodes()`, `status`): only the rows in flight.
CREATE INDEX items_owner ON items (owner) WHERE state = 'fetching';
