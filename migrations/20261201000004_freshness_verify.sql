-- jma-poller state, schema 4: freshness per classification (issue 14) and the SHA-256 of every
-- landed file, for `jma-poller verify`.
-- Never edit this file once released: sqlx checksums it and refuses to start on a change.
-- Add a new, later-numbered migration instead.

-- The newest landed item per (source, classification, data identifier), and the usual gap
-- between arrivals learned from them. Kept by a trigger in the same transaction that marks an
-- item done, so `/metrics`, `status` and the status page read a few hundred rows, never the
-- items table. type_name is '' for archives and items without an identifier.
CREATE TABLE freshness (
    source            TEXT NOT NULL,
    classification    TEXT NOT NULL,
    type_name         TEXT NOT NULL DEFAULT '',
    -- When the newest item landed (finished_ms) and its own receivedTime (unix ms; archives:
    -- the JST midnight their day starts at).
    last_landed_ms    INTEGER NOT NULL,
    last_received_ms  INTEGER NOT NULL,
    -- Usual gap between receivedTimes of successive items (ms): the first gap, then a moving
    -- average (weight 1/4) of later ones, each capped at 4x the current value so that one
    -- outage does not teach the cadence a wrong value. NULL until two items came.
    interval_ms       INTEGER,
    -- Gaps learned so far.
    samples           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, classification, type_name)
) STRICT, WITHOUT ROWID;

-- Items landed per hour (unix ms / 3600000) over the last two days, for the status page's chart.
CREATE TABLE landings (
    hour   INTEGER PRIMARY KEY,
    items  INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Only a newer receivedTime teaches a gap: an item landing again (a repair) or out of order
-- (two workers) moves nothing back.
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

-- A mirror upgraded to this schema starts from what it holds (one pass over the items, once);
-- the gaps are learned from the next arrivals (the catalog's cadence serves meanwhile).
INSERT INTO freshness (source, classification, type_name, last_landed_ms, last_received_ms)
SELECT source, classification, COALESCE(type_name, ''), MAX(COALESCE(finished_ms, 0)),
       MAX(COALESCE(received_ms, finished_ms, 0))
FROM items WHERE state = 'done'
GROUP BY source, classification, COALESCE(type_name, '');

-- Every file a landed item wrote, with its size and SHA-256 (lowercase hex), computed while
-- the bytes streamed to disk and recorded in the transaction that marks the item done. name is
-- the file's path inside the item's folder (concat children, archive members), '' when the
-- item is a single file at items.path. Items that landed before this schema (or were adopted
-- after a crash) have no rows until `jma-poller verify` records what it finds.
CREATE TABLE item_files (
    seq     INTEGER NOT NULL REFERENCES items (seq) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    bytes   INTEGER NOT NULL,
    sha256  TEXT NOT NULL,
    PRIMARY KEY (seq, name)
) STRICT, WITHOUT ROWID;
