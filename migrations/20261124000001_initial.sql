-- jma-poller state, schema 1.
-- Never edit this file once released: sqlx checksums it and refuses to start on a change.
-- Add a new, later-numbered migration instead.

-- One row per list endpoint we follow (today: 'jmafile').
CREATE TABLE cursors (
    name             TEXT PRIMARY KEY NOT NULL,
    -- The nextPooling token to send as cursorToken on the next PuLL; NULL = baseline needed.
    token            TEXT,
    -- Filters the token was obtained with (JSON); tokens carry no filters, so they are resent.
    query            TEXT NOT NULL DEFAULT '{}',
    -- Watermark: every item with a serial up to this one is recorded. Paging back stops when
    -- it reaches it. Advanced only when a pass is complete (no gap behind it).
    high_serial      INTEGER,
    -- A backlog being paged back across polls: the nextToken to continue with, the head's
    -- nextPooling to adopt once it is done, and the head's highest serial (the next watermark).
    backlog_token    TEXT,
    backlog_pooling  TEXT,
    backlog_high     INTEGER,
    -- receivedTime (unix ms) of the newest item listed, bounds a re-baseline.
    last_received_ms INTEGER,
    -- nextPoolingInterval of the last response, and when that response arrived (unix ms):
    -- the next poll, even after a restart, is not sent before last_poll_ms + interval_ms.
    interval_ms      INTEGER,
    last_poll_ms     INTEGER,
    last_error       TEXT,
    last_error_ms    INTEGER
) STRICT;

-- Every item we have listed, with its download state. Rows are only ever added or updated.
CREATE TABLE items (
    seq             INTEGER PRIMARY KEY,
    source          TEXT NOT NULL CHECK (source IN ('jmafile', 'archive')),
    id              TEXT NOT NULL,
    serial          INTEGER,
    classification  TEXT NOT NULL,
    received_ms     INTEGER,
    url             TEXT NOT NULL,
    -- What the downloader needs (compression, format, expected files and lengths), as JSON.
    plan            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'fetching', 'done', 'failed')),
    -- 0 = jmafile (goes first), 1 = archives.
    priority        INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- 429 answers for this item: they back off (to 45 min) but never use up attempts.
    throttles       INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- Final path relative to the data dir, fixed when the item is listed. Knowing it before
    -- the download lets a restart adopt a file that was renamed into place just before a crash.
    path            TEXT,
    bytes           INTEGER,
    listed_ms       INTEGER NOT NULL,
    started_ms      INTEGER,
    finished_ms     INTEGER,
    UNIQUE (source, id)
) STRICT;

CREATE UNIQUE INDEX items_path ON items (path) WHERE path IS NOT NULL;
-- The download queue: waiting rows only, in the order they are served.
CREATE INDEX items_queue ON items (priority, received_ms, serial) WHERE state = 'pending';
CREATE INDEX items_due ON items (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX items_state ON items (state, source);
-- Retention walks items from the oldest.
CREATE INDEX items_received ON items (received_ms);

-- When each body download was started, so the data budget survives a restart (a crash loop
-- must not turn into a burst of requests upstream). Pruned to the last day.
CREATE TABLE fetch_log (
    at_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX fetch_log_at ON fetch_log (at_ms);

-- The post-download hook (hooks.on_file): one row per landed item while hooks are configured,
-- written in the same transaction that marks the item done, so it runs at least once even
-- across crashes.
CREATE TABLE hooks (
    seq             INTEGER PRIMARY KEY REFERENCES items (seq) ON DELETE CASCADE,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    exit_code       INTEGER,
    last_error      TEXT,
    finished_ms     INTEGER
) STRICT;
CREATE INDEX hooks_queue ON hooks (next_attempt_ms) WHERE state = 'pending';

-- Items and bytes per source and state, kept by triggers in the same transactions as the items
-- themselves, so `status` costs the same with a million items as with ten.
CREATE TABLE counts (
    source   TEXT NOT NULL,
    state    TEXT NOT NULL,
    items    INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0,
    -- Newest finished_ms among the rows that entered this state (for "last landed").
    last_ms  INTEGER,
    PRIMARY KEY (source, state)
) STRICT, WITHOUT ROWID;

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

-- Hook runs per state, likewise.
CREATE TABLE hook_counts (
    state  TEXT PRIMARY KEY NOT NULL,
    runs   INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;

CREATE TRIGGER hooks_counts_insert AFTER INSERT ON hooks BEGIN
    INSERT INTO hook_counts (state, runs) VALUES (NEW.state, 1)
    ON CONFLICT (state) DO UPDATE SET runs = runs + 1;
END;

CREATE TRIGGER hooks_counts_update AFTER UPDATE OF state ON hooks
WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE hook_counts SET runs = runs - 1 WHERE state = OLD.state;
    INSERT INTO hook_counts (state, runs) VALUES (NEW.state, 1)
    ON CONFLICT (state) DO UPDATE SET runs = runs + 1;
END;

CREATE TRIGGER hooks_counts_delete AFTER DELETE ON hooks BEGIN
    UPDATE hook_counts SET runs = runs - 1 WHERE state = OLD.state;
END;
