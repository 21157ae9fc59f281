//! [`QueueStore`] on SQLite: the `items` queue, claims (owner, lease, fencing token) and every
//! transition. The queue queries name their partial indexes (`INDEXED BY`).

use sqlx::Row;

use super::*;

impl QueueStore for SqliteStore {
    /// Records listed items without touching any cursor (the `backfill` command).
    async fn insert(&self, items: &[NewItem], now: i64) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = insert_items(&mut tx, items, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Claims the next due item (jmafile before archives, oldest first) and logs the body
    /// request it is about to make, in one transaction. The same transaction records the
    /// request on the row and holds the id back for `refetch_delay`, before anything is sent;
    /// an item still held by an earlier request (or a same-id block) is never claimed, however
    /// it came back to the queue.
    ///
    /// The queue queries name their partial indexes (`INDEXED BY`): left to itself the planner
    /// picked `items_state` and sorted every waiting row on each claim, which made draining a
    /// large backlog quadratic. Naming the index also makes a schema change that breaks it fail
    /// loudly instead of silently slowing down.
    async fn claim_next(&self, now: i64, claim: &Claim) -> Result<Option<Claimed>, StoreError> {
        let (jmafile_only, classification, from, to) = claim.params();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "UPDATE items SET state = 'fetching', attempts = attempts + 1, started_ms = ?1,
                              last_request_ms = ?1, hold_until_ms = ?1 + ?6,
                              hold_reason = 'refetch_delay',
                              owner = ?7, lease_until_ms = ?1 + ?8, fencing = fencing + 1
             WHERE seq = (SELECT seq FROM items INDEXED BY items_queue
                          WHERE state = 'pending'
                            AND (next_attempt_ms <= ?1 OR next_attempt_ms > ?1 + 7200000) -- CLOCK_JUMP_MS
                            AND (hold_until_ms IS NULL OR hold_until_ms <= ?1
                                 OR hold_until_ms > ?1 + 7200000        -- CLOCK_JUMP_MS
                                 OR last_request_ms > ?1 + 5000)        -- CLOCK_BACK_MS
                            AND (?2 = 0 OR source = 'jmafile')
                            AND (?3 IS NULL OR (source = 'archive' AND classification = ?3
                                                AND received_ms BETWEEN ?4 AND ?5))
                          ORDER BY priority, received_ms, serial LIMIT 1)
             RETURNING seq, source, id, serial, classification, received_ms, url, plan, path, attempts,
                       throttles, fencing",
        )
        .bind(now)
        .bind(jmafile_only)
        .bind(classification)
        .bind(from)
        .bind(to)
        .bind(self.refetch_ms)
        .bind(self.node.as_str())
        .bind(lease_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query("INSERT INTO fetch_log (at_ms) VALUES (?)")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(claimed_from_row(&row)?))
    }

    async fn renew_claim(&self, item: &Claimed, now: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE items SET lease_until_ms = ?1 + ?2
             WHERE seq = ?3 AND state = 'fetching' AND fencing = ?4",
        )
        .bind(now)
        .bind(lease_ms())
        .bind(item.seq)
        .bind(item.fencing)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Claims without an owner were made before claims had one (schema 4 and older), by the
    /// single node that ran then: whoever starts first on the store takes them back.
    async fn own_claims(&self) -> Result<Vec<Claimed>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claimed_columns!(),
            " FROM items WHERE state = 'fetching' AND (owner IS NULL OR owner = ?)"
        ))
        .bind(self.node.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    async fn expired_claims(&self, now: i64) -> Result<Vec<Claimed>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claimed_columns!(),
            " FROM items INDEXED BY items_leases
              WHERE state = 'fetching' AND COALESCE(lease_until_ms, 0) < ?"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    /// Marks an item done; with hooks on, its hook run is recorded in the same transaction, so
    /// no crash can land an item without its hook (at least once). The id stays held for
    /// refetch_delay, should anything ever queue it again.
    async fn mark_done(
        &self,
        item: &Claimed,
        bytes: u64,
        now: i64,
        digests: &[FileDigest],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let marked = sqlx::query(
            "UPDATE items SET state = 'done', bytes = ?1, finished_ms = ?2, last_error = NULL,
                              owner = NULL, lease_until_ms = NULL,
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?3),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?3
                                                 THEN hold_reason ELSE 'refetch_delay' END
             WHERE seq = ?4 AND fencing = ?5",
        )
        .bind(bytes as i64)
        .bind(now)
        .bind(self.hold_after_attempt())
        .bind(item.seq)
        .bind(item.fencing)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !marked {
            tx.rollback().await?;
            return Ok(false);
        }
        super::monitor::replace_digests(&mut tx, item.seq, digests).await?;
        if self.hooks {
            sqlx::query(
                "INSERT INTO hooks (seq, state) VALUES (?, 'pending') ON CONFLICT (seq) DO NOTHING",
            )
            .bind(item.seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Back to the queue after an attempt, due at `next_ms` or when the id's hold ends,
    /// whichever is later: the attempt just made holds the id for refetch_delay from now.
    /// `count_attempt = false` undoes the claim's attempt (shutdown, a full disk or a refused
    /// key are not the item's fault). Returns when the item is due.
    async fn mark_retry(
        &self,
        item: &Claimed,
        error: Option<&str>,
        next_ms: i64,
        count_attempt: bool,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                              next_attempt_ms = MAX(?1, COALESCE(hold_until_ms, 0), ?2),
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?2),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?2
                                                 THEN hold_reason ELSE 'refetch_delay' END,
                              last_error = COALESCE(?3, last_error),
                              attempts = attempts - ?4
             WHERE seq = ?5 AND fencing = ?6
             RETURNING next_attempt_ms",
        )
        .bind(next_ms)
        .bind(self.hold_after_attempt())
        .bind(error)
        .bind(if count_attempt { 0i64 } else { 1 })
        .bind(item.seq)
        .bind(item.fencing)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(next_ms))
    }

    /// Back to the queue after a 429: the attempt is given back and the throttle counted.
    /// Due at `next_ms` or when the id's hold ends, whichever is later (returned).
    async fn mark_throttled(
        &self,
        item: &Claimed,
        error: &str,
        next_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                              next_attempt_ms = MAX(?1, COALESCE(hold_until_ms, 0), ?2),
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?2),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?2
                                                 THEN hold_reason ELSE 'refetch_delay' END,
                              last_error = ?3,
                              attempts = attempts - 1, throttles = throttles + 1
             WHERE seq = ?4 AND fencing = ?5
             RETURNING next_attempt_ms",
        )
        .bind(next_ms)
        .bind(self.hold_after_attempt())
        .bind(error)
        .bind(item.seq)
        .bind(item.fencing)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(next_ms))
    }

    /// Back to the queue after the data host blocked this id (429 "same data"): held until
    /// `until_ms` (at least refetch_delay from now), the attempt given back; nothing else
    /// about the item changes. Returns when the item is due.
    async fn mark_same_id_blocked(
        &self,
        item: &Claimed,
        error: &str,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?1, ?2),
                              next_attempt_ms = MAX(next_attempt_ms, COALESCE(hold_until_ms, 0), ?1, ?2),
                              hold_reason = 'same_id',
                              last_error = ?3,
                              attempts = attempts - 1
             WHERE seq = ?4 AND fencing = ?5
             RETURNING next_attempt_ms",
        )
        .bind(until_ms)
        .bind(self.hold_after_attempt())
        .bind(error)
        .bind(item.seq)
        .bind(item.fencing)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(until_ms))
    }

    /// Back to the queue without an attempt ending here (its holder stopped: a crash, or a
    /// database error after the claim). The hold its claim wrote still applies; the attempt
    /// stays counted.
    async fn requeue(&self, item: &Claimed, error: Option<&str>) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE items SET state = 'pending', next_attempt_ms = 0,
                              last_error = COALESCE(?, last_error),
                              owner = NULL, lease_until_ms = NULL
             WHERE seq = ? AND state = 'fetching' AND fencing = ?",
        )
        .bind(error)
        .bind(item.seq)
        .bind(item.fencing)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Puts failed items back in the queue with fresh attempts (after the operator fixed the
    /// cause). Items refused at listing (unsafe names, untrusted hosts) have no download plan
    /// and stay failed. Each still waits out the hold of its last request (refetch_delay).
    /// Returns (queued again, left failed).
    async fn retry_failed(
        &self,
        source: Option<Source>,
        classification: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let queued = sqlx::query(
            "UPDATE items SET state = 'pending', attempts = 0, throttles = 0, next_attempt_ms = 0,
                              last_error = NULL, finished_ms = NULL
             WHERE state = 'failed' AND plan != 'null'
               AND (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR classification = ?2)",
        )
        .bind(source.map(Source::as_str))
        .bind(classification)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM items WHERE state = 'failed'
               AND (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR classification = ?2)",
        )
        .bind(source.map(Source::as_str))
        .bind(classification)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((queued, left as u64))
    }

    /// Marks an item failed for good. The id stays held for refetch_delay, so `retry-failed`
    /// right after does not request it again at once.
    async fn mark_failed(&self, item: &Claimed, error: &str, now: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE items SET state = 'failed', last_error = ?1, finished_ms = ?2,
                              owner = NULL, lease_until_ms = NULL,
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?3),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?3
                                                 THEN hold_reason ELSE 'refetch_delay' END
             WHERE seq = ?4 AND fencing = ?5",
        )
        .bind(error)
        .bind(now)
        .bind(self.hold_after_attempt())
        .bind(item.seq)
        .bind(item.fencing)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// When the earliest waiting item becomes due, if any item is waiting.
    async fn next_due_ms(&self, claim: &Claim) -> Result<Option<i64>, StoreError> {
        let (jmafile_only, classification, from, to) = claim.params();
        if *claim == Claim::Any {
            // Served by the items_due index alone.
            return Ok(sqlx::query_scalar(
                "SELECT MIN(next_attempt_ms) FROM items INDEXED BY items_due WHERE state = 'pending'",
            )
            .fetch_one(&self.pool)
            .await?);
        }
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_ms FROM items INDEXED BY items_due
             WHERE state = 'pending'
               AND (?1 = 0 OR source = 'jmafile')
               AND (?2 IS NULL OR (source = 'archive' AND classification = ?2
                                   AND received_ms BETWEEN ?3 AND ?4))
             ORDER BY next_attempt_ms LIMIT 1",
        )
        .bind(jmafile_only)
        .bind(classification)
        .bind(from)
        .bind(to)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Finished items (done or failed) received before `cutoff_ms`, oldest first: what
    /// retention may remove. Items still queued or in flight are never returned.
    async fn expired(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, path FROM items
             WHERE received_ms < ? AND state IN ('done', 'failed')
               AND NOT EXISTS (SELECT 1 FROM hooks h
                               WHERE h.seq = items.seq AND h.state IN ('pending', 'running'))
             ORDER BY received_ms LIMIT ?",
        )
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get("seq"), r.get("path")))
            .collect())
    }

    /// Deletes rows (after their files are gone), in one transaction.
    async fn delete_items(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        let list = serde_json::to_string(seqs).unwrap_or_else(|_| "[]".into());
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query(
            "DELETE FROM items WHERE seq IN (SELECT value FROM json_each(?))
               AND state IN ('done', 'failed')",
        )
        .bind(list)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Which of `ids` are already recorded for `source`.
    async fn known_ids(
        &self,
        source: Source,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM items WHERE source = ? AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(source.as_str())
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }
}
