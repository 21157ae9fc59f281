//! [`HookStore`] and [`FetchLog`] on PostgreSQL: the `hooks` queue and the `fetch_log` of body
//! requests.

use super::*;

impl FetchLog for PgStore {
    async fn recent_fetches(&self, since_ms: i64, now: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query("DELETE FROM fetch_log WHERE at_ms < $1")
            .bind(now - 86_400_000)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT at_ms FROM fetch_log WHERE at_ms >= $1 ORDER BY at_ms")
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

impl HookStore for PgStore {
    /// Claims the next due hook run (`FOR UPDATE SKIP LOCKED`, as item claims), with what the
    /// command needs to know about its item, in one statement.
    async fn claim_hook(&self, now: i64) -> Result<Option<HookJob>, StoreError> {
        let row = sqlx::query(
            "WITH next AS (
                SELECT seq FROM hooks WHERE state = 'pending' AND next_attempt_ms <= $1
                ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
             UPDATE hooks SET state = 'running', attempts = hooks.attempts + 1
             FROM next, items
             WHERE hooks.seq = next.seq AND items.seq = hooks.seq
             RETURNING hooks.seq, hooks.attempts, items.source, items.id, items.serial,
                       items.classification, items.path",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(HookJob {
            seq: row.try_get("seq")?,
            attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
            source: row.try_get("source")?,
            id: row.try_get("id")?,
            serial: row.try_get("serial")?,
            classification: row.try_get("classification")?,
            path: row
                .try_get::<Option<String>, _>("path")?
                .unwrap_or_default(),
        }))
    }

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
            "UPDATE hooks SET state = $1, exit_code = $2, last_error = COALESCE($3, last_error),
                              next_attempt_ms = $4, finished_ms = $5,
                              attempts = attempts - $6
             WHERE seq = $7",
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
