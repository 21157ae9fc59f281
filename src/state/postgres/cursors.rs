//! [`CursorStore`] on PostgreSQL: the `cursors` table, and the items a poll commits with it.

use super::*;
use crate::model::Leadership;

impl CursorStore for PgStore {
    async fn cursor(&self, name: &str) -> Result<Option<Cursor>, StoreError> {
        let row = sqlx::query(
            "SELECT token, query, high_serial, last_received_ms, interval_ms, last_poll_ms,
                    backlog_token, backlog_pooling, backlog_high
             FROM cursors WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Cursor {
            token: r.try_get("token")?,
            query: r.try_get("query")?,
            high_serial: r
                .try_get::<Option<i64>, _>("high_serial")?
                .map(|s| s as u64),
            last_received_ms: r.try_get("last_received_ms")?,
            interval_ms: r.try_get("interval_ms")?,
            last_poll_ms: r.try_get("last_poll_ms")?,
            backlog_token: r.try_get("backlog_token")?,
            backlog_pooling: r.try_get("backlog_pooling")?,
            backlog_high: r
                .try_get::<Option<i64>, _>("backlog_high")?
                .map(|s| s as u64),
        }))
    }

    /// Records one poll: the new items and the new cursor, in one transaction, so a crash
    /// can never advance the cursor past items that were not saved.
    async fn commit_poll(
        &self,
        name: &str,
        cursor: &Cursor,
        items: &[NewItem],
        now: i64,
        fence: Option<&Leadership>,
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(lead) = fence {
            super::cluster::check_fence(&mut tx, lead).await?;
        }
        let done = insert_items(&mut tx, items, now).await?;
        sqlx::query(
            "INSERT INTO cursors (name, token, query, high_serial, last_received_ms, interval_ms,
                                  last_poll_ms, backlog_token, backlog_pooling, backlog_high,
                                  last_error, last_error_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL)
             ON CONFLICT (name) DO UPDATE SET
                token = excluded.token, query = excluded.query,
                high_serial = excluded.high_serial, last_received_ms = excluded.last_received_ms,
                interval_ms = excluded.interval_ms, last_poll_ms = excluded.last_poll_ms,
                backlog_token = excluded.backlog_token, backlog_pooling = excluded.backlog_pooling,
                backlog_high = excluded.backlog_high,
                last_error = NULL, last_error_ms = NULL",
        )
        .bind(name)
        .bind(&cursor.token)
        .bind(&cursor.query)
        .bind(cursor.high_serial.map(|s| s as i64))
        .bind(cursor.last_received_ms)
        .bind(cursor.interval_ms)
        .bind(cursor.last_poll_ms)
        .bind(&cursor.backlog_token)
        .bind(&cursor.backlog_pooling)
        .bind(cursor.backlog_high.map(|s| s as i64))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn record_poll_error(&self, name: &str, error: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (name, last_error, last_error_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                              last_error_ms = excluded.last_error_ms",
        )
        .bind(name)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_stream_error(
        &self,
        name: &str,
        query: &str,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (name, query, last_error, last_error_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                              last_error_ms = excluded.last_error_ms",
        )
        .bind(name)
        .bind(query)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_cursor_token(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE cursors SET token = NULL, backlog_token = NULL, backlog_pooling = NULL,
                                backlog_high = NULL
             WHERE name = $1",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// By name in byte order (`COLLATE "C"`), as SQLite sorts them, whatever the database's
    /// collation.
    async fn jmafile_cursors(&self) -> Result<Vec<(String, Cursor)>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM cursors WHERE name = 'jmafile' OR name LIKE 'jmafile:%'
             ORDER BY name COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(c) = self.cursor(&name).await? {
                out.push((name, c));
            }
        }
        Ok(out)
    }

    async fn rename_cursor(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE cursors SET name = $2 WHERE name = $1
               AND NOT EXISTS (SELECT 1 FROM cursors WHERE name = $2)",
        )
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn retire_jmafile_cursors(&self, keep: &[String]) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "DELETE FROM cursors
             WHERE (name = 'jmafile' OR name LIKE 'jmafile:%') AND NOT (name = ANY($1))
             RETURNING name",
        )
        .bind(keep)
        .fetch_all(&self.pool)
        .await?)
    }

    /// For each entry, the newest jmafile item the mirror holds for it. A prefix is matched
    /// with `starts_with`, not a range: a range depends on the database's collation.
    async fn newest_listed(
        &self,
        entries: &[TypeMatch],
    ) -> Result<Vec<Option<(u64, i64)>>, StoreError> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let (sql, arg) = match entry {
                TypeMatch::Any => (
                    "SELECT serial, received_ms FROM items
                     WHERE source = 'jmafile' AND serial IS NOT NULL AND $1::TEXT IS NULL
                     ORDER BY serial DESC LIMIT 1",
                    None,
                ),
                TypeMatch::Exact(t) => (
                    "SELECT serial, received_ms FROM items
                     WHERE type_name = $1 AND source = 'jmafile' AND serial IS NOT NULL
                     ORDER BY serial DESC LIMIT 1",
                    Some(t.as_str()),
                ),
                TypeMatch::Prefix(p) => (
                    "SELECT serial, received_ms FROM items
                     WHERE type_name IS NOT NULL AND starts_with(type_name, $1)
                       AND source = 'jmafile' AND serial IS NOT NULL
                     ORDER BY serial DESC LIMIT 1",
                    Some(p.as_str()),
                ),
            };
            let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(sql)
                .bind(arg)
                .fetch_optional(&self.pool)
                .await?;
            out.push(match row {
                Some((Some(serial), received)) => Some((serial as u64, received.unwrap_or(0))),
                _ => None,
            });
        }
        Ok(out)
    }
}
