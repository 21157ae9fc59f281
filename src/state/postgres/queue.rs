//! [`QueueStore`] on PostgreSQL: the `items` queue, claims (owner, lease, fencing token) and
//! every transition. A claim locks its row with `FOR UPDATE SKIP LOCKED`: concurrent claimers
//! pass over each other's rows instead of waiting on them.

use super::*;

impl QueueStore for PgStore {
    async fn insert(&self, items: &[NewItem], now: i64) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = insert_items(&mut tx, items, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Claims the next due item and logs the body request it is about to make, in one
    /// transaction; the row is picked and locked with `FOR UPDATE SKIP LOCKED`, so two
    /// claimers never get the same item and never wait on each other. The same rules as the
    /// SQLite store: the hold (refetch_delay, same-id block) is respected, with the clock
    /// guards [`crate::state::CLOCK_JUMP_MS`] and [`crate::state::CLOCK_BACK_MS`].
    async fn claim_next(&self, now: i64, claim: &Claim) -> Result<Option<Claimed>, StoreError> {
        let (jmafile_only, classification, from, to) = claim.params();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "WITH next AS (
                SELECT seq FROM items
                WHERE state = 'pending'
                  AND (next_attempt_ms <= $1 OR next_attempt_ms > $1 + 7200000) -- CLOCK_JUMP_MS
                  AND (hold_until_ms IS NULL OR hold_until_ms <= $1
                       OR hold_until_ms > $1 + 7200000        -- CLOCK_JUMP_MS
                       OR last_request_ms > $1 + 5000)        -- CLOCK_BACK_MS
                  AND (NOT $2 OR source = 'jmafile')
                  AND ($3::TEXT IS NULL OR (source = 'archive' AND classification = $3
                                            AND received_ms BETWEEN $4 AND $5))
                ORDER BY priority, received_ms NULLS FIRST, serial NULLS FIRST
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
             UPDATE items SET state = 'fetching', attempts = attempts + 1, started_ms = $1,
                              last_request_ms = $1, hold_until_ms = $1 + $6,
                              hold_reason = 'refetch_delay',
                              owner = $7, lease_until_ms = $1 + $8, fencing = fencing + 1
             FROM next WHERE items.seq = next.seq
             RETURNING ",
            claimed_columns!()
        ))
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
        sqlx::query("INSERT INTO fetch_log (at_ms) VALUES ($1)")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(claimed_from_row(&row)?))
    }

    async fn renew_claim(&self, item: &Claimed, now: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE items SET lease_until_ms = $1 + $2
             WHERE seq = $3 AND state = 'fetching' AND fencing = $4",
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

    async fn own_claims(&self) -> Result<Vec<Claimed>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            claimed_columns!(),
            " FROM items WHERE state = 'fetching' AND (owner IS NULL OR owner = $1)
              ORDER BY seq"
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
            " FROM items WHERE state = 'fetching' AND COALESCE(lease_until_ms, 0) < $1
              ORDER BY seq"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    /// Marks an item done, its digests and (hooks on) its hook run in the same transaction.
    async fn mark_done(
        &self,
        item: &Claimed,
        bytes: u64,
        now: i64,
        digests: &[FileDigest],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(
            "UPDATE items SET state = 'done', bytes = $1, finished_ms = $2, last_error = NULL,
                              owner = NULL, lease_until_ms = NULL,
                              hold_until_ms = GREATEST(COALESCE(hold_until_ms, 0), $3),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= $3
                                                 THEN hold_reason ELSE 'refetch_delay' END
             WHERE seq = $4 AND fencing = $5",
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
                "INSERT INTO hooks (seq, state) VALUES ($1, 'pending') ON CONFLICT (seq) DO NOTHING",
            )
            .bind(item.seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn mark_retry(
        &self,
        item: &Claimed,
        error: Option<&str>,
        next_ms: i64,
        count_attempt: bool,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                              next_attempt_ms = GREATEST($1, COALESCE(hold_until_ms, 0), $2),
                              hold_until_ms = GREATEST(COALESCE(hold_until_ms, 0), $2),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= $2
                                                 THEN hold_reason ELSE 'refetch_delay' END,
                              last_error = COALESCE($3, last_error),
                              attempts = attempts - $4
             WHERE seq = $5 AND fencing = $6
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

    async fn mark_throttled(
        &self,
        item: &Claimed,
        error: &str,
        next_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                              next_attempt_ms = GREATEST($1, COALESCE(hold_until_ms, 0), $2),
                              hold_until_ms = GREATEST(COALESCE(hold_until_ms, 0), $2),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= $2
                                                 THEN hold_reason ELSE 'refetch_delay' END,
                              last_error = $3,
                              attempts = attempts - 1, throttles = throttles + 1
             WHERE seq = $4 AND fencing = $5
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

    async fn mark_same_id_blocked(
        &self,
        item: &Claimed,
        error: &str,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                              hold_until_ms = GREATEST(COALESCE(hold_until_ms, 0), $1, $2),
                              next_attempt_ms = GREATEST(next_attempt_ms, COALESCE(hold_until_ms, 0),
                                                         $1, $2),
                              hold_reason = 'same_id',
                              last_error = $3,
                              attempts = attempts - 1
             WHERE seq = $4 AND fencing = $5
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

    async fn requeue(&self, item: &Claimed, error: Option<&str>) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE items SET state = 'pending', next_attempt_ms = 0,
                              last_error = COALESCE($1, last_error),
                              owner = NULL, lease_until_ms = NULL
             WHERE seq = $2 AND state = 'fetching' AND fencing = $3",
        )
        .bind(error)
        .bind(item.seq)
        .bind(item.fencing)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn retry_failed(
        &self,
        source: Option<Source>,
        classification: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let queued = sqlx::query(
            "UPDATE items SET state = 'pending', attempts = 0, throttles = 0, next_attempt_ms = 0,
                              last_error = NULL, finished_ms = NULL
             WHERE state = 'failed' AND plan != 'null'
               AND ($1::TEXT IS NULL OR source = $1) AND ($2::TEXT IS NULL OR classification = $2)",
        )
        .bind(source.map(Source::as_str))
        .bind(classification)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM items WHERE state = 'failed'
               AND ($1::TEXT IS NULL OR source = $1) AND ($2::TEXT IS NULL OR classification = $2)",
        )
        .bind(source.map(Source::as_str))
        .bind(classification)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((queued, left as u64))
    }

    async fn mark_failed(&self, item: &Claimed, error: &str, now: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE items SET state = 'failed', last_error = $1, finished_ms = $2,
                              owner = NULL, lease_until_ms = NULL,
                              hold_until_ms = GREATEST(COALESCE(hold_until_ms, 0), $3),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= $3
                                                 THEN hold_reason ELSE 'refetch_delay' END
             WHERE seq = $4 AND fencing = $5",
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

    async fn next_due_ms(&self, claim: &Claim) -> Result<Option<i64>, StoreError> {
        let (jmafile_only, classification, from, to) = claim.params();
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_ms) FROM items
             WHERE state = 'pending'
               AND (NOT $1 OR source = 'jmafile')
               AND ($2::TEXT IS NULL OR (source = 'archive' AND classification = $2
                                         AND received_ms BETWEEN $3 AND $4))",
        )
        .bind(jmafile_only)
        .bind(classification)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn expired(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, path FROM items
             WHERE received_ms < $1 AND state IN ('done', 'failed')
               AND NOT EXISTS (SELECT 1 FROM hooks h
                               WHERE h.seq = items.seq AND h.state IN ('pending', 'running'))
             ORDER BY received_ms LIMIT $2",
        )
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("path")?)))
            .collect()
    }

    async fn delete_items(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n =
            sqlx::query("DELETE FROM items WHERE seq = ANY($1) AND state IN ('done', 'failed')")
                .bind(seqs)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn known_ids(
        &self,
        source: Source,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT id FROM items WHERE source = $1 AND id = ANY($2)")
                .bind(source.as_str())
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }
}
