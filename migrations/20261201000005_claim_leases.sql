-- no-transaction
-- jma-poller state, schema 5 (issue 12): claims with an owner and a lease, and a free-text source.
-- Never edit this file once released: sqlx checksums it and refuses to start on a change.
-- Add a new, later-numbered migration instead.
--
-- Work in flight is known from rows, never from one process's memory: a claim records the node
-- that holds it (`owner`), until when (`lease_until_ms`, renewed while the body streams), and a
-- token bumped by every claim (`fencing`), so a holder that lost its item can tell. The source
-- column loses its CHECK: a new source is a new value, not a schema change.
--
-- SQLite cannot drop a CHECK, so `items` is rebuilt (sqlite.org/lang_altertable.html, "making
-- other kinds of table schema changes"). That needs foreign keys off (dropping `items` with
-- them on would delete every `hooks` row through ON DELETE CASCADE), and the pragma is a no-op
-- inside a transaction: hence `no-transaction` above and our own BEGIN ... COMMIT below, which
-- makes the rebuild one atomic step. Should the process die between that COMMIT and sqlx
-- recording the migration, the next start runs this file again, which is harmless: it copies
-- the columns every schema has and rebuilds the same table.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE items_new (
    seq             INTEGER PRIMARY KEY,
    -- 'jmafile', 'archive', …: free text, written only by src/state.
    source          TEXT NOT NULL,
    id              TEXT NOT NULL,
    serial          INTEGER,
    classification  TEXT NOT NULL,
    received_ms     INTEGER,
    url             TEXT NOT NULL,
    plan            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'fetching', 'done', 'failed')),
    priority        INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    throttles       INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    path            TEXT,
    bytes           INTEGER,
    listed_ms       INTEGER NOT NULL,
    started_ms      INTEGER,
    finished_ms     INTEGER,
    last_request_ms INTEGER,
    hold_until_ms   INTEGER,
    hold_reason     TEXT,
    type_name       TEXT,
    -- The node holding the claim (state 'fetching'); NULL otherwise, and for claims an older
    -- schema made (the single node that made them takes them back at start).
    owner           TEXT,
    -- The claim is the owner's until then (unix ms); after it, anyone may take the item back.
    lease_until_ms  INTEGER,
    -- Bumped by every claim: a requeue or renewal carrying an older value is refused.
    fencing         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, id)
) STRICT;

INSERT INTO items_new (seq, source, id, serial, classification, received_ms, url, plan, state,
                       priority, attempts, throttles, next_attempt_ms, last_error, path, bytes,
                       listed_ms, started_ms, finished_ms, last_request_ms, hold_until_ms,
                       hold_reason, type_name)
SELECT seq, source, id, serial, classification, received_ms, url, plan, state,
       priority, attempts, throttles, next_attempt_ms, last_error, path, bytes,
       listed_ms, started_ms, finished_ms, last_request_ms, hold_until_ms,
       hold_reason, type_name
FROM items;

DROP TABLE items;
ALTER TABLE items_new RENAME TO items;

-- Every index and trigger of `items` as schemas 1-4 made them (dropped with the old table;
-- `hooks` and `item_files` keep referring to `items` by name, so they follow the new table).
CREATE UNIQUE INDEX items_path ON items (path) WHERE path IS NOT NULL;
CREATE INDEX items_queue ON items (priority, received_ms, serial) WHERE state = 'pending';
CREATE INDEX items_due ON items (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX items_state ON items (state, source);
CREATE INDEX items_received ON items (received_ms);
CREATE INDEX items_held ON items (hold_until_ms) WHERE state = 'pending' AND hold_until_ms IS NOT NULL;
CREATE INDEX items_type ON items (type_name, serial) WHERE type_name IS NOT NULL;
-- New: claims in flight by lease end (the expired-claim sweep reads only these rows).
CREATE INDEX items_leases ON items (lease_until_ms) WHERE state = 'fetching';

CREATE TRIGGER items_counts_insert AFTER INSERT ON items BEGIN
    INSERT INTO counts (source, state, items, bytes, last_ms)
    VALUES (NEW.source, NEW.state, 1, COALESCE(NEW.bytes, 0), NEW.finished_ms)
    ON CONFLICT (source, state) DO UPDATE SET
        items = items + 1,
        bytes = bytes + COALESCE(NEW.bytes, 0),
        last_ms = MAX(COALESCE(last_ms, 0), COALESCE(NEW.finished_ms, 0));
END;

CREATE TRIGGER items_counts_update AFTER UPDATE OF state, bytes ON items
WHEN OLD.state IS NOT NEW.state OR OLD.bytes IS NOT NEW.bytes BEGIN
    UPDATE counts SET items = items - 1, bytes = bytes - COALESCE(OLD.bytes, 0)
    WHERE source = OLD.source AND state = OLD.state;
    INSERT INTO counts (source, state, items, bytes, last_ms)
    VALUES (NEW.source, NEW.state, 1, COALESCE(NEW.bytes, 0), NEW.finished_ms)
    ON CONFLICT (source, state) DO UPDATE SET
        items = items + 1,
        bytes = bytes + COALESCE(NEW.bytes, 0),
        last_ms = MAX(COALESCE(last_ms, 0), COALESCE(NEW.finished_ms, 0));
END;

CREATE TRIGGER items_counts_delete AFTER DELETE ON items BEGIN
    UPDATE counts SET items = items - 1, bytes = bytes - COALESCE(OLD.bytes, 0)
    WHERE source = OLD.source AND state = OLD.state;
END;

CREATE TRIGGER items_hold_queue AFTER UPDATE OF state, next_attempt_ms, hold_until_ms ON items
WHEN NEW.state = 'pending' AND NEW.hold_until_ms > NEW.next_attempt_ms BEGIN
    UPDATE items SET next_attempt_ms = NEW.hold_until_ms WHERE seq = NEW.seq;
END;

-- Schema 4: freshness per classification, in the transaction that marks an item done.
CREATE TRIGGER items_freshness AFTER UPDATE OF state ON items
WHEN NEW.state = 'done' AND OLD.state IS NOT 'done' BEGIN
    INSERT INTO freshness (source, classification, type_name, last_landed_ms, last_received_ms)
    VALUES (NEW.source, NEW.classification, COALESCE(NEW.type_name, ''),
            COALESCE(NEW.finished_ms, 0), COALESCE(NEW.received_ms, NEW.finished_ms, 0))
    ON CONFLICT (source, classification, type_name) DO UPDATE SET
        interval_ms = CASE
            WHEN excluded.last_received_ms <= freshness.last_received_ms THEN freshness.interval_ms
            WHEN freshness.interval_ms IS NULL
                THEN excluded.last_received_ms - freshness.last_received_ms
            ELSE freshness.interval_ms
                 + (MIN(excluded.last_received_ms - freshness.last_received_ms,
                        4 * freshness.interval_ms) - freshness.interval_ms) / 4
        END,
        samples = freshness.samples
                  + (excluded.last_received_ms > freshness.last_received_ms),
        last_landed_ms = MAX(freshness.last_landed_ms, excluded.last_landed_ms),
        last_received_ms = MAX(freshness.last_received_ms, excluded.last_received_ms);
    INSERT INTO landings (hour, items) VALUES (COALESCE(NEW.finished_ms, 0) / 3600000, 1)
    ON CONFLICT (hour) DO UPDATE SET items = landings.items + 1;
    DELETE FROM landings WHERE hour < COALESCE(NEW.finished_ms, 0) / 3600000 - 48;
END;

COMMIT;
PRAGMA foreign_keys = ON;
