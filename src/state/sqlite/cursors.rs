//! [`CursorStore`] on SQLite: the `cursors` table, and the items a poll commits with it.

use sqlx::Row;

use super::*;

impl CursorStore for SqliteStore {
    async fn cursor(&self, name: &str) -> Result<Option<Cursor>, StoreError> {
        let row = sqlx::query(
            "SELECT token, query, high_serial, last_received_ms, interval_ms, last_poll_ms,
                    backlog_token, backlog_pooling, backlog_high
             FROM cursors WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Cursor {
            token: r.get("token"),
            query: r.get("query"),
            high_serial: r.get::<Option<i64>, _>("high_serial").map(|s| s as u64),
            last_received_ms: r.get("last_received_ms"),
            interval_ms: r.get("interval_ms"),
            last_poll_ms: r.get("last_poll_ms"),
            backlog_token: r.get("backlog_token"),
            backlog_pooling: r.get("backlog_pooling"),
            backlog_high: r.get::<Option<i64>, _>("backlog_high").map(|s| s as u64),
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(lead) = fence {
            cluster::check_fence(&mut tx, lead).await?;
        }
        let done = insert_items(&mut tx, items, now).await?;
        sqlx::query(
            "INSERT INTO cursors (name, token, query, high_serial, last_received_ms, interval_ms,
                                  last_poll_ms, backlog_token, backlog_pooling, backlog_high,
                                  last_error, last_error_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)
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

    /// Notes a failed poll for `status`; the cursor itself is left alone.
    async fn record_poll_error(&self, name: &str, error: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (name, last_error, last_error_ms) VALUES (?, ?, ?)
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

    /// Like [`Store::record_poll_error`], for a PuLL stream: a row made by the error (the
    /// stream never polled successfully) carries the stream's filters, so `status` shows them.
    async fn record_stream_error(
        &self,
        name: &str,
        query: &str,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (name, query, last_error, last_error_ms) VALUES (?, ?, ?, ?)
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

    /// Drops the cursor and any backlog token (after the API refused one), keeping the
    /// watermark, so the next poll lists without a cursor back to it.
    async fn clear_cursor_token(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE cursors SET token = NULL, backlog_token = NULL, backlog_pooling = NULL,
                                backlog_high = NULL
             WHERE name = ?",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The jmafile PuLL cursors (`jmafile`, `jmafile:…`) with their state.
    async fn jmafile_cursors(&self) -> Result<Vec<(String, Cursor)>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM cursors WHERE name = 'jmafile' OR name LIKE 'jmafile:%' ORDER BY name",
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

    /// Gives a cursor row another name (a stream whose types are unchanged but whose name is
    /// new, e.g. after an upgrade). Does nothing if `to` exists.
    async fn rename_cursor(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE cursors SET name = ?2 WHERE name = ?1
               AND NOT EXISTS (SELECT 1 FROM cursors WHERE name = ?2)",
        )
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Removes the jmafile cursors of streams no longer planned; returns their names.
    async fn retire_jmafile_cursors(&self, keep: &[String]) -> Result<Vec<String>, StoreError> {
        let keep = serde_json::to_string(keep).unwrap_or_else(|_| "[]".into());
        Ok(sqlx::query_scalar(
            "DELETE FROM cursors
             WHERE (name = 'jmafile' OR name LIKE 'jmafile:%')
               AND name NOT IN (SELECT value FROM json_each(?))
             RETURNING name",
        )
        .bind(keep)
        .fetch_all(&self.pool)
        .await?)
    }

    /// For each entry, the newest jmafile item the mirror holds for it: (serial, receivedTime
    /// ms), or None if it holds none. Served by the `items_type` index.
    async fn newest_listed(
        &self,
        entries: &[TypeMatch],
    ) -> Result<Vec<Option<(u64, i64)>>, StoreError> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let row: Option<(Option<i64>, Option<i64>)> = match entry {
                TypeMatch::Any => {
                    sqlx::query_as(
                        "SELECT serial, received_ms FROM items
                         WHERE source = 'jmafile' AND serial IS NOT NULL
                         ORDER BY serial DESC LIMIT 1",
                    )
                    .fetch_optional(&self.pool)
                    .await?
                }
                TypeMatch::Exact(t) => {
                    sqlx::query_as(
                        "SELECT serial, received_ms FROM items INDEXED BY items_type
                         WHERE type_name = ? AND source = 'jmafile' AND serial IS NOT NULL
                         ORDER BY serial DESC LIMIT 1",
                    )
                    .bind(t)
                    .fetch_optional(&self.pool)
                    .await?
                }
                TypeMatch::Prefix(p) => {
                    // A range on the index: every text that starts with `p` sorts between `p`
                    // and `p` followed by the highest code point.
                    sqlx::query_as(
                        "SELECT serial, received_ms FROM items INDEXED BY items_type
                         WHERE type_name >= ?1 AND type_name < ?1 || char(1114111)
                           AND source = 'jmafile' AND serial IS NOT NULL
                         ORDER BY serial DESC LIMIT 1",
                    )
                    .bind(p)
                    .fetch_optional(&self.pool)
                    .await?
                }
            };
            out.push(match row {
                Some((Some(serial), received)) => Some((serial as u64, received.unwrap_or(0))),
                _ => None,
            });
        }
        Ok(out)
    }
}
