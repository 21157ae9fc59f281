//! [`ReportStore`] on SQLite: `status`, waiting ids, gauges, diagnostics. Counts come from the
//! `counts` and `hook_counts` tables the triggers keep, never from a scan of `items`.

use sqlx::Row;

use super::*;

impl ReportStore for SqliteStore {
    /// Waiting items whose next request waits on a hold (refetch_delay or a same-id block)
    /// rather than on a longer backoff: counts per reason and the first [`WAITING_LISTED`] by
    /// due time. Reads only the held rows (`items_held`), so it costs the same with a million
    /// items.
    async fn waiting(&self, now: i64) -> Result<Waiting, StoreError> {
        // The claim's own rule: a hold counts unless it was written before the clock went back.
        macro_rules! held {
            () => {
                " state = 'pending' AND hold_until_ms > ?1
                  AND hold_until_ms >= next_attempt_ms
                  AND hold_until_ms <= ?1 + 7200000                            -- CLOCK_JUMP_MS
                  AND (last_request_ms IS NULL OR last_request_ms <= ?1 + 5000) -- CLOCK_BACK_MS
                "
            };
        }
        let mut counts = Vec::new();
        let rows = sqlx::query(concat!(
            "SELECT hold_reason, COUNT(*) AS n, MIN(hold_until_ms) AS due
             FROM items INDEXED BY items_held WHERE",
            held!(),
            "GROUP BY hold_reason ORDER BY hold_reason"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let reason: Option<String> = r.get("hold_reason");
            let Some(reason) = reason.as_deref().and_then(HoldReason::parse) else {
                continue;
            };
            counts.push(WaitingCount {
                reason,
                items: r.get("n"),
                next_due_ms: r.get("due"),
            });
        }
        let items: Vec<WaitingItem> = sqlx::query(concat!(
            "SELECT source, id, serial, classification, hold_reason, hold_until_ms,
                    last_request_ms
             FROM items INDEXED BY items_held WHERE",
            held!(),
            "ORDER BY hold_until_ms LIMIT ?2"
        ))
        .bind(now)
        .bind(WAITING_LISTED)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .filter_map(|r| {
            let reason: Option<String> = r.get("hold_reason");
            Some(WaitingItem {
                reason: HoldReason::parse(reason.as_deref()?)?,
                source: r.get("source"),
                id: r.get("id"),
                serial: r.get("serial"),
                classification: r.get("classification"),
                due_ms: r.get("hold_until_ms"),
                last_request_ms: r.get("last_request_ms"),
            })
        })
        .collect();
        let total: i64 = counts.iter().map(|c| c.items).sum();
        Ok(Waiting {
            more: (total - items.len() as i64).max(0),
            counts,
            items,
        })
    }

    /// A trivial query: is the database usable?
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Items waiting or in flight, per source (cheap: only those rows are read).
    async fn queue_depth(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, SUM(items) AS n FROM counts WHERE state IN ('pending', 'fetching')
             GROUP BY source",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(&'static str, i64)> =
            Source::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for r in rows {
            let source: String = r.get("source");
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == source) {
                slot.1 = r.get("n");
            }
        }
        Ok(out)
    }

    /// Items on disk (for the `files` gauge; read once at start, then counted up).
    async fn done_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(SUM(items), 0) FROM counts WHERE state = 'done'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Archives of one classification with dates in `[from_ms, to_ms]`, counted by state.
    async fn archive_progress(
        &self,
        classification: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM items
             WHERE source = 'archive' AND classification = ? AND received_ms BETWEEN ? AND ?
             GROUP BY state",
        )
        .bind(classification)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get("state"), r.get("n")))
            .collect())
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        let cursors = sqlx::query(
            "SELECT name, query, token IS NOT NULL AS has_token, backlog_token IS NOT NULL AS backlog,
                    last_received_ms, high_serial, interval_ms, last_poll_ms,
                    last_error, last_error_ms FROM cursors ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| CursorStatus {
            name: r.get("name"),
            types: serde_json::from_str::<serde_json::Value>(r.get::<&str, _>("query"))
                .ok()
                .and_then(|q| {
                    q.get("types")?
                        .as_array()?
                        .iter()
                        .map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            has_token: r.get("has_token"),
            backlog: r.get("backlog"),
            last_received_ms: r.get("last_received_ms"),
            high_serial: r.get("high_serial"),
            interval_ms: r.get("interval_ms"),
            last_poll_ms: r.get("last_poll_ms"),
            last_error: r.get("last_error"),
            last_error_ms: r.get("last_error_ms"),
        })
        .collect();
        let counts = sqlx::query(
            "SELECT source, state, items AS n, bytes AS b
             FROM counts WHERE items > 0 ORDER BY source, state",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| StateCount {
            source: r.get("source"),
            state: r.get("state"),
            items: r.get("n"),
            bytes: r.get("b"),
        })
        .collect();
        let archive_newest = sqlx::query(
            "SELECT classification, MAX(received_ms) AS newest FROM items
             WHERE source = 'archive' AND state = 'done' GROUP BY classification ORDER BY classification",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get("classification"), r.get("newest")))
        .collect();
        let hooks =
            sqlx::query("SELECT state, runs AS n FROM hook_counts WHERE runs > 0 ORDER BY state")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| (r.get("state"), r.get("n")))
                .collect();
        let last_landed_ms =
            sqlx::query_scalar("SELECT MAX(last_ms) FROM counts WHERE state = 'done'")
                .fetch_one(&self.pool)
                .await?;
        let recent_errors = sqlx::query(
            "SELECT source, id, classification, state, attempts, last_error,
                    COALESCE(finished_ms, started_ms) AS at_ms
             FROM items
             WHERE state = 'failed' OR (state = 'pending' AND last_error IS NOT NULL)
             ORDER BY COALESCE(finished_ms, started_ms) DESC LIMIT 5",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| RecentError {
            source: r.get("source"),
            id: r.get("id"),
            classification: r.get("classification"),
            state: r.get("state"),
            attempts: r.get("attempts"),
            error: r.get::<Option<String>, _>("last_error").unwrap_or_default(),
            at_ms: r.get("at_ms"),
        })
        .collect();
        let waiting = self.waiting(now_ms()).await?;
        Ok(StatusReport {
            cursors,
            counts,
            hooks,
            archive_newest,
            last_landed_ms,
            recent_errors,
            waiting,
        })
    }

    /// State, attempts, error and path of one item (tests and diagnostics).
    async fn item_state(&self, source: Source, id: &str) -> Result<Option<ItemStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT state, attempts, last_error, path FROM items WHERE source = ? AND id = ?",
        )
        .bind(source.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            (
                r.get("state"),
                r.get("attempts"),
                r.get("last_error"),
                r.get("path"),
            )
        }))
    }

    /// `PRAGMA integrity_check`, for tests and `status --check`.
    async fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every done item's path and bytes (to compare the database with the disk).
    async fn done_paths(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT id, path, bytes FROM items WHERE state = 'done' ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get("id"),
                    r.get::<Option<String>, _>("path").unwrap_or_default(),
                    r.get::<Option<i64>, _>("bytes").unwrap_or(0),
                )
            })
            .collect())
    }
}
