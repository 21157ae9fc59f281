//! What monitoring and `jma-poller verify` read and write, on PostgreSQL (inherent methods, as
//! on SQLite): per-classification freshness (kept by a trigger) and the size and SHA-256 of
//! every landed file.

use std::collections::HashSet;

use sqlx::Row;

use super::PgStore;
use crate::state::{DamagedRepair, FileDigest, FreshnessRow, StoreError, VerifyItem};

/// Replaces the recorded files of `seq` with `digests` (nothing to record: left as it was).
pub(super) async fn replace_digests(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    seq: i64,
    digests: &[FileDigest],
) -> Result<(), StoreError> {
    if digests.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM item_files WHERE seq = $1")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    insert_digests(tx, seq, digests).await
}

async fn insert_digests(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    seq: i64,
    digests: &[FileDigest],
) -> Result<(), StoreError> {
    let names: Vec<&str> = digests.iter().map(|d| d.name.as_str()).collect();
    let bytes: Vec<i64> = digests
        .iter()
        .map(|d| d.bytes.min(i64::MAX as u64) as i64)
        .collect();
    let sums: Vec<&str> = digests.iter().map(|d| d.sha256.as_str()).collect();
    sqlx::query(
        "INSERT INTO item_files (seq, name, bytes, sha256)
         SELECT $1, name, bytes, sha256 FROM UNNEST($2::TEXT[], $3::BIGINT[], $4::TEXT[])
                AS f (name, bytes, sha256)
         ON CONFLICT (seq, name) DO UPDATE SET bytes = excluded.bytes, sha256 = excluded.sha256",
    )
    .bind(seq)
    .bind(names)
    .bind(bytes)
    .bind(sums)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PgStore {
    /// Every freshness row (one per classification and data identifier seen).
    pub async fn freshness(&self) -> Result<Vec<FreshnessRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, classification, type_name, last_landed_ms, last_received_ms,
                    interval_ms, samples
             FROM freshness
             ORDER BY source COLLATE \"C\", classification COLLATE \"C\", type_name COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(FreshnessRow {
                    source: r.try_get("source")?,
                    classification: r.try_get("classification")?,
                    type_name: r.try_get("type_name")?,
                    last_landed_ms: r.try_get("last_landed_ms")?,
                    last_received_ms: r.try_get("last_received_ms")?,
                    interval_ms: r.try_get("interval_ms")?,
                    samples: r.try_get("samples")?,
                })
            })
            .collect()
    }

    /// Items landed per hour over the last `hours` hours up to `now` (oldest first).
    pub async fn landings_per_hour(&self, now: i64, hours: i64) -> Result<Vec<i64>, StoreError> {
        let current = now / 3_600_000;
        let first = current - hours + 1;
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT hour, items FROM landings WHERE hour >= $1 AND hour <= $2")
                .bind(first)
                .bind(current)
                .fetch_all(&self.pool)
                .await?;
        let mut out = vec![0i64; hours.max(0) as usize];
        for (hour, items) in rows {
            if let Some(slot) = usize::try_from(hour - first)
                .ok()
                .and_then(|b| out.get_mut(b))
            {
                *slot = items;
            }
        }
        Ok(out)
    }

    /// Up to `limit` done items with seq above `after`, in seq order, with their recorded
    /// files, read in one snapshot.
    pub async fn done_items_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<VerifyItem>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT seq, source, id, classification, received_ms, path, bytes, plan
             FROM items
             WHERE seq > $1 AND state = 'done' AND path IS NOT NULL ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            items.push(VerifyItem {
                seq: r.try_get("seq")?,
                source: r.try_get("source")?,
                id: r.try_get("id")?,
                classification: r.try_get("classification")?,
                received_ms: r.try_get("received_ms")?,
                path: r.try_get("path")?,
                bytes: r.try_get("bytes")?,
                plan: r.try_get("plan")?,
                files: Vec::new(),
            });
        }
        if let (Some(first), Some(last)) = (items.first(), items.last()) {
            let files: Vec<(i64, String, i64, String)> = sqlx::query_as(
                "SELECT seq, name, bytes, sha256 FROM item_files WHERE seq BETWEEN $1 AND $2
                 ORDER BY seq, name COLLATE \"C\"",
            )
            .bind(first.seq)
            .bind(last.seq)
            .fetch_all(&mut *tx)
            .await?;
            for (seq, name, bytes, sha256) in files {
                if let Ok(i) = items.binary_search_by_key(&seq, |it| it.seq) {
                    items[i].files.push(FileDigest {
                        name,
                        bytes: bytes.max(0) as u64,
                        sha256,
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(items)
    }

    /// Records what `verify` found for items that had no files recorded, in one transaction;
    /// an item no longer done, or recorded meanwhile, is skipped. Returns items recorded.
    pub async fn record_first_digests(
        &self,
        found: &[(i64, Vec<FileDigest>)],
    ) -> Result<u64, StoreError> {
        if found.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut recorded = 0;
        for (seq, digests) in found {
            // The item's row locked, so the daemon's own recording cannot interleave.
            let open: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM items WHERE seq = $1 AND state = 'done' FOR UPDATE)
                        AND NOT EXISTS (SELECT 1 FROM item_files WHERE seq = $1)",
            )
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
            if open && !digests.is_empty() {
                insert_digests(&mut tx, *seq, digests).await?;
                recorded += 1;
            }
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Which of `paths` (relative to the data dir) are some item's path, whatever its state.
    pub async fn owned_paths(&self, paths: &[String]) -> Result<HashSet<String>, StoreError> {
        if paths.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<String> = sqlx::query_scalar("SELECT path FROM items WHERE path = ANY($1)")
            .bind(paths)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// The item whose path is the folder `path`, if any: its seq, and whether its files are
    /// recorded.
    pub async fn item_at(&self, path: &str) -> Result<Option<(i64, bool)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, EXISTS (SELECT 1 FROM item_files f WHERE f.seq = items.seq)
             FROM items WHERE path = $1",
        )
        .bind(path)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Which of `names` are recorded files of item `seq`.
    pub async fn recorded_names(
        &self,
        seq: i64,
        names: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT name FROM item_files WHERE seq = $1 AND name = ANY($2)")
                .bind(seq)
                .bind(names)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Whether item `seq` is still done.
    pub async fn still_done(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM items WHERE seq = $1 AND state = 'done')",
        )
        .bind(seq)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Queues a damaged item again (`verify --repair`), in one transaction (see the SQLite
    /// store's): its files and hook run forgotten, the id's hold kept.
    pub async fn requeue_damaged(
        &self,
        seq: i64,
        reason: &str,
    ) -> Result<DamagedRepair, StoreError> {
        let mut tx = self.pool.begin().await?;
        let due: Option<i64> = sqlx::query_scalar(
            "UPDATE items SET state = 'pending', attempts = 0, throttles = 0, next_attempt_ms = 0,
                              last_error = $1, finished_ms = NULL, bytes = NULL
             WHERE seq = $2 AND state = 'done'
             RETURNING next_attempt_ms",
        )
        .bind(reason)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(due_ms) = due else {
            tx.rollback().await?;
            return Ok(DamagedRepair::NotDone);
        };
        for sql in [
            "DELETE FROM item_files WHERE seq = $1",
            "DELETE FROM hooks WHERE seq = $1",
        ] {
            sqlx::query(sql).bind(seq).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(DamagedRepair::Queued { due_ms })
    }
}
