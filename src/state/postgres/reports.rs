//! [`ReportStore`] on PostgreSQL: `status`, waiting ids, gauges, diagnostics. Counts come from
//! the `counts` and `hook_counts` tables the triggers keep, never from a scan of `items`.

use super::*;

/// The claim's own rule for a hold that counts (see the SQLite store's `waiting`).
macro_rules! held {
    () => {
        " state = 'pending' AND hold_until_ms > $1
          AND hold_until_ms >= next_attempt_ms
          AND hold_until_ms <= $1 + 7200000                            -- CLOCK_JUMP_MS
          AND (last_request_ms IS NULL OR last_request_ms <= $1 + 5000) -- CLOCK_BACK_MS
        "
    };
}

impl ReportStore for PgStore {
    async fn waiting(&self, now: i64) -> Result<Waiting, StoreError> {
        let mut counts = Vec::new();
        let rows = sqlx::query(concat!(
            "SELECT hold_reason, COUNT(*) AS n, MIN(hold_until_ms) AS due FROM items WHERE",
            held!(),
            "GROUP BY hold_reason ORDER BY hold_reason"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let reason: Option<String> = r.try_get("hold_reason")?;
            let Some(reason) = reason.as_deref().and_then(HoldReason::parse) else {
                continue;
            };
            counts.push(WaitingCount {
                reason,
                items: r.try_get("n")?,
                next_due_ms: r.try_get("due")?,
            });
        }
        let mut items = Vec::new();
        let rows = sqlx::query(concat!(
            "SELECT source, id, serial, classification, hold_reason, hold_until_ms,
                    last_request_ms
             FROM items WHERE",
            held!(),
            "ORDER BY hold_until_ms LIMIT $2"
        ))
        .bind(now)
        .bind(WAITING_LISTED)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let reason: Option<String> = r.try_get("hold_reason")?;
            let Some(reason) = reason.as_deref().and_then(HoldReason::parse) else {
                continue;
            };
            items.push(WaitingItem {
                reason,
                source: r.try_get("source")?,
                id: r.try_get("id")?,
                serial: r.try_get("serial")?,
                classification: r.try_get("classification")?,
                due_ms: r.try_get("hold_until_ms")?,
                last_request_ms: r.try_get("last_request_ms")?,
            });
        }
        let total: i64 = counts.iter().map(|c| c.items).sum();
        Ok(Waiting {
            more: (total - items.len() as i64).max(0),
            counts,
            items,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn queue_depth(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, SUM(items)::BIGINT AS n FROM counts
             WHERE state IN ('pending', 'fetching') GROUP BY source",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(&'static str, i64)> =
            Source::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for r in rows {
            let source: String = r.try_get("source")?;
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == source) {
                slot.1 = r.try_get("n")?;
            }
        }
        Ok(out)
    }

    async fn done_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(SUM(items), 0)::BIGINT FROM counts WHERE state = 'done'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn archive_progress(
        &self,
        classification: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT state, COUNT(*) FROM items
             WHERE source = 'archive' AND classification = $1 AND received_ms BETWEEN $2 AND $3
             GROUP BY state",
        )
        .bind(classification)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        let mut cursors = Vec::new();
        for r in sqlx::query(
            "SELECT name, query, token IS NOT NULL AS has_token,
                    backlog_token IS NOT NULL AS backlog,
                    last_received_ms, high_serial, interval_ms, last_poll_ms,
                    last_error, last_error_ms FROM cursors ORDER BY name COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let query: String = r.try_get("query")?;
            cursors.push(CursorStatus {
                name: r.try_get("name")?,
                types: serde_json::from_str::<serde_json::Value>(&query)
                    .ok()
                    .and_then(|q| {
                        q.get("types")?
                            .as_array()?
                            .iter()
                            .map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                has_token: r.try_get("has_token")?,
                backlog: r.try_get("backlog")?,
                last_received_ms: r.try_get("last_received_ms")?,
                high_serial: r.try_get("high_serial")?,
                interval_ms: r.try_get("interval_ms")?,
                last_poll_ms: r.try_get("last_poll_ms")?,
                last_error: r.try_get("last_error")?,
                last_error_ms: r.try_get("last_error_ms")?,
            });
        }
        let counts = sqlx::query_as::<_, (String, String, i64, i64)>(
            "SELECT source, state, items, bytes FROM counts WHERE items > 0
             ORDER BY source COLLATE \"C\", state COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(source, state, items, bytes)| StateCount {
            source,
            state,
            items,
            bytes,
        })
        .collect();
        let archive_newest: Vec<(String, i64)> = sqlx::query_as(
            "SELECT classification, MAX(received_ms) FROM items
             WHERE source = 'archive' AND state = 'done' AND received_ms IS NOT NULL
             GROUP BY classification ORDER BY classification COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        let hooks: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, runs FROM hook_counts WHERE runs > 0 ORDER BY state COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        let last_landed_ms: Option<i64> =
            sqlx::query_scalar("SELECT MAX(last_ms) FROM counts WHERE state = 'done'")
                .fetch_one(&self.pool)
                .await?;
        let mut recent_errors = Vec::new();
        for r in sqlx::query(
            "SELECT source, id, classification, state, attempts, last_error,
                    COALESCE(finished_ms, started_ms) AS at_ms
             FROM items
             WHERE state = 'failed' OR (state = 'pending' AND last_error IS NOT NULL)
             ORDER BY COALESCE(finished_ms, started_ms) DESC NULLS LAST LIMIT 5",
        )
        .fetch_all(&self.pool)
        .await?
        {
            recent_errors.push(RecentError {
                source: r.try_get("source")?,
                id: r.try_get("id")?,
                classification: r.try_get("classification")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                error: r
                    .try_get::<Option<String>, _>("last_error")?
                    .unwrap_or_default(),
                at_ms: r.try_get("at_ms")?,
            });
        }
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

    async fn item_state(&self, source: Source, id: &str) -> Result<Option<ItemStatus>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT state, attempts, last_error, path FROM items WHERE source = $1 AND id = $2",
        )
        .bind(source.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// PostgreSQL checks its own pages; what can drift here is ours: the counts the triggers
    /// keep against the items and hook runs they count. "ok", or what differs.
    async fn integrity_check(&self) -> Result<String, StoreError> {
        let drift: Vec<String> = sqlx::query_scalar(
            "WITH actual AS (
                SELECT source, state, COUNT(*)::BIGINT AS items,
                       COALESCE(SUM(bytes), 0)::BIGINT AS bytes
                FROM items GROUP BY source, state),
             kept AS (SELECT source, state, items, bytes FROM counts WHERE items <> 0 OR bytes <> 0)
             SELECT format('counts %s/%s: kept %s items %s bytes, actual %s items %s bytes',
                           COALESCE(a.source, k.source), COALESCE(a.state, k.state),
                           COALESCE(k.items, 0), COALESCE(k.bytes, 0),
                           COALESCE(a.items, 0), COALESCE(a.bytes, 0))
             FROM actual a FULL JOIN kept k ON a.source = k.source AND a.state = k.state
             WHERE a.items IS DISTINCT FROM k.items OR a.bytes IS DISTINCT FROM k.bytes
             UNION ALL
             SELECT format('hook_counts %s: kept %s, actual %s', COALESCE(a.state, k.state),
                           COALESCE(k.runs, 0), COALESCE(a.runs, 0))
             FROM (SELECT state, COUNT(*)::BIGINT AS runs FROM hooks GROUP BY state) a
             FULL JOIN (SELECT state, runs FROM hook_counts WHERE runs <> 0) k
               ON a.state = k.state
             WHERE a.runs IS DISTINCT FROM k.runs",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(if drift.is_empty() {
            "ok".to_owned()
        } else {
            drift.join("; ")
        })
    }

    async fn done_paths(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, COALESCE(path, ''), COALESCE(bytes, 0) FROM items
             WHERE state = 'done' ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
