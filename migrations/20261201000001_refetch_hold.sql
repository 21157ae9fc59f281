-- jma-poller state, schema 2: per-id politeness (download.refetch_delay, download.same_id_backoff).
-- Never edit this file once released: sqlx checksums it and refuses to start on a change.
-- Add a new, later-numbered migration instead.
--
-- The data hosts block an id that is requested again soon (429 "Don't try to get the same
-- data."), so no item's url may be requested sooner than refetch_delay after the previous
-- request of the same id, across restarts and whatever queues the item again. The hold lives
-- here, in the row, so every path that puts an item back in the queue obeys it.

-- When the item's url was last requested (unix ms), written in the claim transaction, before
-- the request goes out.
ALTER TABLE items ADD COLUMN last_request_ms INTEGER;
-- No request of this id before this time (unix ms): the last request plus refetch_delay
-- (renewed from the end of each attempt), or the end of a same-id block the data host
-- announced. The claim refuses an item while it holds.
ALTER TABLE items ADD COLUMN hold_until_ms INTEGER;
-- What the hold waits for: 'refetch_delay' or 'same_id' (for `status` and the metrics). No
-- CHECK constraint: adding a column with one makes SQLite verify every existing row, which
-- took 11 s on a million items; only src/state writes it.
ALTER TABLE items ADD COLUMN hold_reason TEXT;

-- Waiting rows that hold, for `status` and the gauges.
CREATE INDEX items_held ON items (hold_until_ms) WHERE state = 'pending' AND hold_until_ms IS NOT NULL;

-- A row put back in the queue (a retry, crash recovery, `retry-failed`, any later repair) is
-- never due before its hold ends, so the due time the workers sleep on (`items_due`) is the
-- real one and nobody polls for an item the claim would refuse.
CREATE TRIGGER items_hold_queue AFTER UPDATE OF state, next_attempt_ms, hold_until_ms ON items
WHEN NEW.state = 'pending' AND NEW.hold_until_ms > NEW.next_attempt_ms BEGIN
    UPDATE items SET next_attempt_ms = NEW.hold_until_ms WHERE seq = NEW.seq;
END;
