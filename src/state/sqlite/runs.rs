//! [`HookStore`] and [`FetchLog`] on SQLite: the `hooks` queue and the `fetch_log` of body
//! requests.

use sqlx::Row;

use super::*;

impl FetchLog for SqliteStore {
    /// Body requests started since `since_ms` (to restore the data budget after a restart),
    /// pruning entries older than a day.
    async fn recent_fetches(&self, since_ms: i64, now: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query("DELETE FROM fetch_log WHERE at_ms < ?")
            .bind(now - 86_400_000)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT at_ms FROM fetch_log WHERE at_ms >= ? ORDER BY at_ms")
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

impl HookStore for SqliteStore {
    /// Claims the next due hook run, with what the command needs to know about its item.
    async fn claim_hook(&self, now: i64) -> Result<Option<HookJob>, StoreError> {
        let row = sqlx::query(
            "UPDATE hooks SET state = 'running', attempts = attempts + 1
             WHERE seq = (SELECT seq FROM hooks WHERE state = 'pending' AND next_attempt_ms <= ?
                          ORDER BY seq LIMIT 1)
             RETURNING seq, attempts",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let seq: i64 = row.get("seq");
        let item =
            sqlx::query("SELECT source, id, serial, classification, path FROM items WHERE seq = ?")
                .bind(seq)
                .fetch_one(&self.pool)
                .await?;
        Ok(Some(HookJob {
            seq,
            attempts: row.get::<i64, _>("attempts").max(0) as u32,
            source: item.get("source"),
            id: item.get("id"),
            serial: item.get("serial"),
            classification: item.get("classification"),
            path: item.get::<Option<String>, _>("path").unwrap_or_default(),
        }))
    }

    /// Records a hook run's outcome: done, again after `retry_ms`, or failed for good.
    async fn finish_hook(
        &self,
        seq: i64,
        outcome: HookOutcome<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (state, code, error, next) = match outcome {
            HookOutcome::Done => ("done", Some(0), None, 0),
            HookOutcome::Retry { code, error, at_ms } => ("pending", code, Some(error), at_ms),
            HookOutcome::Failed { code, error } => ("failed", code, Some(error), 0),
            HookOutcome::Interrupted => ("pending", None, None, 0),
        };
        sqlx::query(
            "UPDATE hooks SET state = ?, exit_code = ?, last_error = COALESCE(?, last_error),
                              next_attempt_ms = ?, finished_ms = ?,
                              attempts = attempts - ?
             WHERE seq = ?",
        )
        .bind(state)
        .bind(code)
        .bind(error)
        .bind(next)
        .bind(now)
        .bind(matches!(outcome, HookOutcome::Interrupted) as i64)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Hook runs a crashed process left `running` go back to the queue (at least once).
    async fn requeue_running_hooks(&self) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE hooks SET state = 'pending' WHERE state = 'running'")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn next_hook_due_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT MIN(next_attempt_ms) FROM hooks WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
