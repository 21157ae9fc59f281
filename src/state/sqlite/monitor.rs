//! What monitoring and `jma-poller verify` read and write (SQLite; still inherent methods of the
//! backend, not yet a trait of the store seam): per-classification freshness (kept by
//! a trigger, see migration 4), and the size and SHA-256 of every landed file.
//!
//! Every query here is either a read of a small table (`freshness`), a page of items by seq,
//! or an indexed lookup, so `/metrics` and `verify` cost the same per item with a million
//! items as with ten, and `verify` never holds a transaction longer than one page.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::SqliteStore as Store;
use crate::state::StoreError;

/// One file a landed item wrote. `name` is its path inside the item's folder, or `""` when
/// the item is that one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The newest landed item of one (source, classification, data identifier), and the usual gap
/// learned between arrivals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreshnessRow {
    pub source: String,
    pub classification: String,
    /// `""` for archives and items without an identifier.
    pub type_name: String,
    pub last_landed_ms: i64,
    pub last_received_ms: i64,
    pub interval_ms: Option<i64>,
    /// Gaps learned so far.
    pub samples: i64,
}

/// A done item as `verify` sees it: where it is, what it should hold, what was recorded.
#[derive(Debug, Clone)]
pub struct VerifyItem {
    pub seq: i64,
    pub source: String,
    pub id: String,
    pub classification: String,
    pub received_ms: Option<i64>,
    pub path: String,
    pub bytes: Option<i64>,
    /// The item's plan as stored (JSON).
    pub plan: String,
    /// Recorded files (empty: none recorded yet).
    pub files: Vec<FileDigest>,
}

/// What asking to fetch a damaged item again did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DamagedRepair {
    /// Back in the queue; no request before `due_ms` (the id's refetch_delay or same-id hold).
    Queued { due_ms: i64 },
    /// The item is no longer done (the daemon or retention got to it first): left alone.
    NotDone,
}

/// Replaces the recorded files of `seq` with `digests` (nothing to record: left as it was).
pub(super) async fn replace_digests(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    seq: i64,
    digests: &[FileDigest],
) -> Result<(), StoreError> {
    if digests.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM item_files WHERE seq = ?")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    insert_digests(tx, seq, digests).await
}

async fn insert_digests(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    seq: i64,
    digests: &[FileDigest],
) -> Result<(), StoreError> {
    let json = serde_json::to_string(digests).map_err(|e| StoreError::BadRow {
        id: seq.to_string(),
        detail: format!("digests: {e}"),
    })?;
    sqlx::query(
        "INSERT OR REPLACE INTO item_files (seq, name, bytes, sha256)
         SELECT ?1, json_extract(value, '$.name'), json_extract(value, '$.bytes'),
                json_extract(value, '$.sha256')
         FROM json_each(?2)",
    )
    .bind(seq)
    .bind(json)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Every freshness row (one per classification and data identifier seen: hundreds at most).
    pub async fn freshness(&self) -> Result<Vec<FreshnessRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, classification, type_name, last_landed_ms, last_received_ms,
                    interval_ms, samples
             FROM freshness ORDER BY source, classification, type_name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FreshnessRow {
                source: r.get("source"),
                classification: r.get("classification"),
                type_name: r.get("type_name"),
                last_landed_ms: r.get("last_landed_ms"),
                last_received_ms: r.get("last_received_ms"),
                interval_ms: r.get("interval_ms"),
                samples: r.get("samples"),
            })
            .collect())
    }

    /// Items landed per hour over the last `hours` hours up to `now` (oldest first; the last
    /// is the current hour), from the `landings` table the freshness trigger keeps.
    pub async fn landings_per_hour(&self, now: i64, hours: i64) -> Result<Vec<i64>, StoreError> {
        let current = now / 3_600_000;
        let first = current - hours + 1;
        let rows = sqlx::query("SELECT hour, items FROM landings WHERE hour >= ? AND hour <= ?")
            .bind(first)
            .bind(current)
            .fetch_all(&self.pool)
            .await?;
        let mut out = vec![0i64; hours.max(0) as usize];
        for r in rows {
            let hour: i64 = r.get("hour");
            if let Some(slot) = usize::try_from(hour - first)
                .ok()
                .and_then(|b| out.get_mut(b))
            {
                *slot = r.get("items");
            }
        }
        Ok(out)
    }

    /// Up to `limit` done items with seq above `after`, in seq order, with their recorded
    /// files: one short read per page, so the daemon is never held up.
    pub async fn done_items_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<VerifyItem>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // NOT INDEXED: a walk along the rowid. Left to itself the planner read every done row
        // through `items_state` and sorted them for each page, which made a whole verify
        // quadratic (35 % of its CPU in SQLite at 100,000 items).
        let rows = sqlx::query(
            "SELECT seq, source, id, classification, received_ms, path, bytes, plan
             FROM items NOT INDEXED
             WHERE seq > ? AND state = 'done' AND path IS NOT NULL ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut items: Vec<VerifyItem> = rows
            .into_iter()
            .map(|r| VerifyItem {
                seq: r.get("seq"),
                source: r.get("source"),
                id: r.get("id"),
                classification: r.get("classification"),
                received_ms: r.get("received_ms"),
                path: r.get("path"),
                bytes: r.get("bytes"),
                plan: r.get("plan"),
                files: Vec::new(),
            })
            .collect();
        if let (Some(first), Some(last)) = (items.first(), items.last()) {
            let files = sqlx::query(
                "SELECT seq, name, bytes, sha256 FROM item_files WHERE seq BETWEEN ? AND ?
                 ORDER BY seq, name",
            )
            .bind(first.seq)
            .bind(last.seq)
            .fetch_all(&mut *tx)
            .await?;
            for f in files {
                let seq: i64 = f.get("seq");
                if let Ok(i) = items.binary_search_by_key(&seq, |it| it.seq) {
                    items[i].files.push(FileDigest {
                        name: f.get("name"),
                        bytes: f.get::<i64, _>("bytes").max(0) as u64,
                        sha256: f.get("sha256"),
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(items)
    }

    /// Records what `verify` found for items that had no files recorded (the first verify
    /// after an upgrade, or an adopted item), in one short transaction; an item that is no
    /// longer done, or got its files recorded meanwhile, is skipped. Returns items recorded.
    pub async fn record_first_digests(
        &self,
        found: &[(i64, Vec<FileDigest>)],
    ) -> Result<u64, StoreError> {
        if found.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut recorded = 0;
        for (seq, digests) in found {
            let open: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM items WHERE seq = ?1 AND state = 'done')
                        AND NOT EXISTS (SELECT 1 FROM item_files WHERE seq = ?1)",
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

    /// Which of `paths` (relative to the data dir) are some item's path, whatever its state
    /// (a file renamed into place just before its item was marked done is the daemon's).
    /// One indexed lookup per path (`items_path`).
    pub async fn owned_paths(&self, paths: &[String]) -> Result<HashSet<String>, StoreError> {
        if paths.is_empty() {
            return Ok(HashSet::new());
        }
        let list = serde_json::to_string(paths).unwrap_or_else(|_| "[]".into());
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT path FROM items WHERE path IN (SELECT value FROM json_each(?))",
        )
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The item whose path is the folder `path`, if any: its seq, and whether its files are
    /// recorded (then only those belong to it).
    pub async fn item_at(&self, path: &str) -> Result<Option<(i64, bool)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, EXISTS (SELECT 1 FROM item_files f WHERE f.seq = items.seq) AS recorded
             FROM items WHERE path = ?",
        )
        .bind(path)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get("seq"), r.get("recorded"))))
    }

    /// Which of `names` are recorded files of item `seq`.
    pub async fn recorded_names(
        &self,
        seq: i64,
        names: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let list = serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM item_files WHERE seq = ? AND name IN (SELECT value FROM json_each(?))",
        )
        .bind(seq)
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Whether item `seq` is still done (a finding made while the daemon runs is confirmed
    /// before it is reported: retention may have removed the item in between).
    pub async fn still_done(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM items WHERE seq = ? AND state = 'done')",
        )
        .bind(seq)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Queues a damaged item again (`verify --repair`), in one transaction: fresh attempts,
    /// the reason as its last error, its recorded files and hook run forgotten (the new copy
    /// is recorded, and hooked, when it lands). The id's hold stays, so the request waits out
    /// `download.refetch_delay` after the previous one (or a same-id block); the claim then
    /// goes through the data budget like any other. The one exception to "never fetched again
    /// once done".
    pub async fn requeue_damaged(
        &self,
        seq: i64,
        reason: &str,
    ) -> Result<DamagedRepair, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let changed = sqlx::query(
            "UPDATE items SET state = 'pending', attempts = 0, throttles = 0, next_attempt_ms = 0,
                              last_error = ?1, finished_ms = NULL, bytes = NULL
             WHERE seq = ?2 AND state = 'done'",
        )
        .bind(reason)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(DamagedRepair::NotDone);
        }
        for sql in [
            "DELETE FROM item_files WHERE seq = ?",
            "DELETE FROM hooks WHERE seq = ?",
        ] {
            sqlx::query(sql).bind(seq).execute(&mut *tx).await?;
        }
        let due_ms: i64 = sqlx::query_scalar("SELECT next_attempt_ms FROM items WHERE seq = ?")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DamagedRepair::Queued { due_ms })
    }
}
