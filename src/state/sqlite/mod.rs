//! The SQLite state store, today's backend: the only module with SQL. One SQLite file (WAL,
//! `synchronous=FULL`) holds the poll cursors, every listed item with its download state and
//! claim, the log of body requests and the hook runs; the schema is `migrations/`, embedded.
//!
//! Promises (beyond the traits' contract):
//! * every write is one transaction, and writers take the lock up front (`BEGIN IMMEDIATE`),
//!   so concurrent processes (the daemon, `status`, `backfill`) wait instead of failing;
//! * inserts are idempotent on `(source, id)`: listing an item twice never downloads it twice;
//! * progress lives in rows, not in memory, so a restart (even after `kill -9`) resumes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::prelude::*;
use super::{
    Claim, Claimed, Committed, Cursor, CursorStatus, FileDigest, HoldReason, HookJob, HookOutcome,
    ItemStatus, LEASE, LeaderRow, Leadership, NewItem, NodeId, NodeRow, NodeTaken, RecentError,
    Source, StateCount, StatusReport, StoreError, TypeMatch, WAITING_LISTED, Waiting, WaitingCount,
    WaitingItem, now_ms,
};

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

mod cluster;
pub mod copy;
mod cursors;
pub mod monitor;
mod queue;
mod reports;
mod runs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `download.refetch_delay`'s default, used by a store nobody configured (the polite side).
const DEFAULT_REFETCH_MS: i64 = 60_000;

pub(super) trait ClaimParams {
    fn params(&self) -> (bool, Option<&str>, i64, i64);
}

impl ClaimParams for Claim {
    /// (jmafile only?, archive classification, from, to) as SQL parameters.
    fn params(&self) -> (bool, Option<&str>, i64, i64) {
        match self {
            Claim::Any => (false, None, 0, 0),
            Claim::JmafileOnly => (true, None, 0, 0),
            Claim::Archives {
                classification,
                from_ms,
                to_ms,
            } => (false, Some(classification), *from_ms, *to_ms),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// `hooks.on_file` is set: every item marked done also gets a hook row.
    hooks: bool,
    /// `download.refetch_delay` in ms: each request of an id holds it back this long.
    refetch_ms: i64,
    /// The node this handle claims as.
    node: NodeId,
}

/// A pool that never reaps its connections. With `idle_timeout` or `max_lifetime` set (sqlx
/// sets both by default) the pool runs a maintenance task, and in sqlx 0.9.0 that task can read
/// a transiently underflowed idle count (usize::MAX) and spin on a runtime worker forever
/// without yielding (launchbadge/sqlx#3645, fixed upstream by #4289 after 0.9.0): 100 % of a
/// core, and a process that never finishes shutting down. Our test suite hit it (a test that
/// opens thousands of short-lived pools hung CI). Reaping buys nothing for a local SQLite
/// file, so without the timeouts the task is never started.
fn pool_options(max_connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .idle_timeout(None)
        .max_lifetime(None)
}

impl SqliteStore {
    /// Opens (creating if needed) the database and brings the schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.to_owned(),
                source: Box::new(sqlx::Error::Io(e)),
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss, not just a process crash. Writes are few
            // (one per poll and two per item), so the extra fsync is cheap.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = pool_options(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        // Another program's database opens fine; refuse to add our tables to it.
        let (tables, ours): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE name = '_sqlx_migrations')
             FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_one(&pool)
        .await
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        if tables > 0 && ours == 0 {
            pool.close().await;
            return Err(StoreError::Foreign {
                path: path.to_owned(),
            });
        }
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        Ok(SqliteStore {
            pool,
            hooks: false,
            refetch_ms: DEFAULT_REFETCH_MS,
            node: NodeId::from_host(),
        })
    }

    /// Records a hook run for every item marked done from now on (`hooks.on_file` is set).
    pub fn with_hooks(mut self, enabled: bool) -> SqliteStore {
        self.hooks = enabled;
        self
    }

    /// Claims as `node` from now on (tests; the HA issue makes it a setting).
    pub fn with_node(mut self, node: NodeId) -> SqliteStore {
        self.node = node;
        self
    }

    /// Each request of an id holds the id back this long (`download.refetch_delay`), from
    /// the claim and again from the end of the attempt.
    pub fn with_refetch_delay(mut self, delay: Duration) -> SqliteStore {
        self.refetch_ms = delay.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// The hold an attempt ending now leaves: refetch_delay from now, rounded up to the next
    /// millisecond so that it is never shorter than the delay, counted from the moment the
    /// server saw the request.
    fn hold_after_attempt(&self) -> i64 {
        now_ms() + 1 + self.refetch_ms
    }

    /// Opens an existing database for reading only (`status` while the daemon runs).
    pub async fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: Box::new(source),
            })?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = pool_options(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        // A foreign file opens fine but has none of our tables: say so plainly.
        let ours: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', 'cursors')",
        )
        .fetch_one(&pool)
        .await
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        if ours != 2 {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: Box::new(sqlx::Error::Protocol("not a jma-poller database".into())),
            });
        }
        Ok(SqliteStore {
            pool,
            hooks: false,
            refetch_ms: DEFAULT_REFETCH_MS,
            node: NodeId::from_host(),
        })
    }
}

impl StateStore for SqliteStore {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn for_node(&self, node: NodeId) -> SqliteStore {
        self.clone().with_node(node)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Inserts listed items (skipping known ids) inside `tx`.
pub(super) async fn insert_items(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    items: &[NewItem],
    now: i64,
) -> Result<Committed, StoreError> {
    let mut done = Committed::default();
    for item in items {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM items WHERE source = ? AND id = ?")
                .bind(item.source.as_str())
                .bind(&item.id)
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_some() {
            done.duplicates += 1;
            done.new.push(false);
            continue;
        }
        let mut path = item.path.clone();
        if let Some(p) = &path {
            let taken: Option<i64> = sqlx::query_scalar("SELECT seq FROM items WHERE path = ?")
                .bind(p)
                .fetch_optional(&mut **tx)
                .await?;
            if taken.is_some() {
                let unique = crate::model::plan::disambiguate(p, &item.id);
                tracing::warn!(
                    event = "path_collision",
                    id = %item.id,
                    path = %p,
                    using = %unique,
                    "another item already owns this path; storing this one beside it"
                );
                path = Some(unique);
            }
        }
        let plan = match &item.plan {
            Some(p) => serde_json::to_string(p).map_err(|e| StoreError::BadRow {
                id: item.id.clone(),
                detail: e.to_string(),
            })?,
            None => "null".to_owned(),
        };
        let (state, finished) = match &item.refused {
            Some(_) => ("failed", Some(now)),
            None => ("pending", None),
        };
        sqlx::query(
            "INSERT INTO items (source, id, serial, classification, received_ms, url, plan,
                                    state, priority, last_error, path, listed_ms, finished_ms,
                                    type_name)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(item.source.as_str())
        .bind(&item.id)
        .bind(item.serial.map(|s| s as i64))
        .bind(&item.classification)
        .bind(item.received_ms)
        .bind(&item.url)
        .bind(plan)
        .bind(state)
        .bind(item.source.priority())
        .bind(&item.refused)
        .bind(path)
        .bind(now)
        .bind(finished)
        .bind(&item.type_name)
        .execute(&mut **tx)
        .await?;
        if item.refused.is_some() {
            done.refused += 1;
        } else {
            done.inserted += 1;
        }
        done.new.push(true);
    }
    Ok(done)
}

/// The columns [`claimed_from_row`] reads.
macro_rules! claimed_columns {
    () => {
        "seq, source, id, serial, classification, received_ms, url, plan, path, attempts, \
         throttles, fencing"
    };
}
pub(super) use claimed_columns;

/// [`LEASE`] in ms, as the columns count.
pub(super) fn lease_ms() -> i64 {
    LEASE.as_millis() as i64
}

pub(super) fn claimed_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Claimed, StoreError> {
    let id: String = row.get("id");
    let bad = |detail: String| StoreError::BadRow {
        id: id.clone(),
        detail,
    };
    let source: String = row.get("source");
    let plan: String = row.get("plan");
    Ok(Claimed {
        seq: row.get("seq"),
        source: Source::parse(&source).ok_or_else(|| bad(format!("unknown source {source:?}")))?,
        serial: row.get::<Option<i64>, _>("serial").map(|s| s as u64),
        classification: row.get("classification"),
        received_ms: row.get("received_ms"),
        url: row.get("url"),
        plan: serde_json::from_str(&plan).map_err(|e| bad(format!("plan: {e}")))?,
        path: row
            .get::<Option<String>, _>("path")
            .ok_or_else(|| bad("no path".into()))?,
        attempts: row.get::<i64, _>("attempts").max(0) as u32,
        throttles: row.get::<i64, _>("throttles").max(0) as u32,
        fencing: row.get("fencing"),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::SqliteStore as Store;
    use super::*;

    /// The backends' contract, against SQLite (a fresh file per case).
    #[tokio::test]
    async fn sqlite_passes_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        crate::state::contract::run_contract(|| {
            let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("state-{k}.sqlite"));
            async move {
                SqliteStore::open(&path)
                    .await
                    .unwrap()
                    .with_node(NodeId("a".into()))
            }
        })
        .await;
    }

    /// Schema 5 rebuilds `items` without the source CHECK and with claim columns, keeping
    /// every row, index, trigger and hook run; an in-flight row from before it has no owner,
    /// and is this node's to take back at start.
    #[tokio::test]
    async fn the_lease_migration_keeps_rows_indexes_triggers_and_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let schema = |pool: SqlitePool| async move {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT type || ' ' || name FROM sqlite_master
                 WHERE tbl_name = 'items' AND type IN ('index', 'trigger') ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            pool.close().await;
            names
        };
        let before = {
            let pool = pool_options(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true)
                        .foreign_keys(true),
                )
                .await
                .unwrap();
            MIGRATOR.run_to(20261201000004, &pool).await.unwrap();
            for (id, state) in [("a", "done"), ("b", "fetching"), ("c", "pending")] {
                sqlx::query(
                    "INSERT INTO items (source, id, serial, classification, received_ms, url,
                                        plan, state, path, listed_ms, bytes)
                     VALUES ('jmafile', ?1, 1, 'c', 1000, 'u', ?2, ?3, ?1, 1, 7)",
                )
                .bind(id)
                .bind(serde_json::to_string(&item(id).plan).unwrap())
                .bind(state)
                .execute(&pool)
                .await
                .unwrap();
            }
            sqlx::query(
                "INSERT INTO item_files (seq, name, bytes, sha256)
                 SELECT seq, '', 7, 'ab' FROM items WHERE id = 'a'",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO hooks (seq, state) SELECT seq, 'pending' FROM items WHERE id = 'a'",
            )
            .execute(&pool)
            .await
            .unwrap();
            schema(pool).await
        };
        let store = Store::open(&path).await.unwrap().with_hooks(true);
        let after = schema(store.pool.clone()).await;
        let mut expected = before.clone();
        expected.push("index items_leases".into());
        expected.sort();
        assert_eq!(after, expected, "every index and trigger kept");
        let store = Store::open(&path).await.unwrap().with_hooks(true);
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
        let fk: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert!(fk.is_empty(), "{fk:?}");
        let hook = store.claim_hook(now_ms()).await.unwrap().unwrap();
        assert_eq!(hook.id, "a", "the hook run survived the rebuild");
        let counts = store.status().await.unwrap().counts;
        let n = |state: &str| counts.iter().find(|c| c.state == state).map(|c| c.items);
        assert_eq!(
            (n("done"), n("fetching"), n("pending")),
            (Some(1), Some(1), Some(1))
        );
        let own = store.own_claims().await.unwrap();
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].id, "b");
        let files: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item_files")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(files, 1, "the digests survived the rebuild");
        // The freshness trigger (schema 4) still fires when an item lands.
        assert!(store.mark_done(&own[0], 7, now_ms(), &[]).await.unwrap());
        let fresh: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM landings")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(fresh, 1);
        // A third source is a new value, not a schema change.
        sqlx::query("INSERT INTO items (source, id, classification, url, plan, state, listed_ms) VALUES ('third', 'z', 'c', 'u', 'null', 'pending', 1)")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
    }

    /// An upgraded mirror knows the data identifier of what it listed before the column
    /// existed (read from the file name), so a new stream starts from it.
    #[tokio::test]
    async fn the_streams_migration_reads_old_rows_identifiers_from_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let pool = pool_options(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            MIGRATOR.run_to(20261124000001, &pool).await.unwrap();
            for (id, serial, class, leaf) in [
                (
                    "a",
                    5,
                    "jmafile.rdr-nc5min",
                    "Z__C_RJTD_20261124105401_RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL_grib2.bin",
                ),
                (
                    "b",
                    6,
                    "jmafile.obs-amds",
                    "Z__C_COMP_20261124105401_OBS_AMDSCC_004",
                ),
                (
                    "c",
                    7,
                    "jmafile.srf-p10",
                    "Z__C_RJTD_20261124105401_SRF_GPV_Ggis1km_Prr60lv_Aper10min_ANAL_grib2.~abc.bin",
                ),
                ("d", 8, "jmafile.x", "odd-name.bin"),
            ] {
                sqlx::query(
                    "INSERT INTO items (source, id, serial, classification, received_ms, url, plan,
                                        state, path, listed_ms)
                     VALUES ('jmafile', ?, ?, ?, 1000, 'u', 'null', 'done', ?, 1)",
                )
                .bind(id)
                .bind(serial)
                .bind(class)
                .bind(format!("jmafile/{class}/2026-11-24/{leaf}"))
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let found = store
            .newest_listed(&[
                TypeMatch::Exact("RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL".into()),
                TypeMatch::Exact("OBS_AMDSCC".into()),
                TypeMatch::Prefix("SRF_GPV".into()),
                TypeMatch::Prefix("RDR_GPV_Ggis0p25km".into()),
                TypeMatch::Any,
            ])
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![
                Some((5, 1000)),
                Some((6, 1000)),
                Some((7, 1000)),
                None,
                Some((8, 1000))
            ]
        );
        store.close().await;
    }

    fn item(id: &str) -> NewItem {
        use crate::model::plan::{Compression, Layout, Plan};
        NewItem {
            source: Source::Jmafile,
            id: id.into(),
            serial: Some(1),
            classification: "jmafile.x".into(),
            received_ms: Some(now_ms()),
            url: format!("https://data.api.dmdata.jp/v1/{id}"),
            plan: Some(Plan {
                compression: Compression::Gzip,
                layout: Layout::Single { length: 1 },
            }),
            path: Some(format!("jmafile/x/{id}")),
            refused: None,
            type_name: None,
        }
    }

    /// Waits until the wall clock reaches `ms`.
    async fn until(ms: i64) {
        let left = ms - now_ms();
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(left as u64 + 1)).await;
        }
    }

    /// Whatever puts an item back in the queue (a retry, crash recovery, `retry-failed`), it
    /// is not claimed again before refetch_delay has passed since its last request, and the
    /// due time the workers sleep on says so.
    #[tokio::test]
    async fn no_path_back_to_the_queue_skips_the_refetch_hold() {
        const DELAY: i64 = 300;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.sqlite"))
            .await
            .unwrap()
            .with_refetch_delay(Duration::from_millis(DELAY as u64));
        store.insert(&[item("a")], now_ms()).await.unwrap();
        let claimed_at = now_ms();
        let a = store
            .claim_next(claimed_at, &Claim::Any)
            .await
            .unwrap()
            .unwrap();

        // Crash recovery: held from the claim.
        assert!(store.requeue(&a, None).await.unwrap());
        let due = store.next_due_ms(&Claim::Any).await.unwrap().unwrap();
        assert_eq!(due, claimed_at + DELAY);
        assert!(
            store
                .claim_next(due - 1, &Claim::Any)
                .await
                .unwrap()
                .is_none()
        );
        until(due).await;
        let a = store
            .claim_next(now_ms(), &Claim::Any)
            .await
            .unwrap()
            .unwrap();

        // A retry asked for "now" is due a refetch_delay after the attempt ended.
        let ended = now_ms();
        let due = store.mark_retry(&a, Some("broken"), 0, true).await.unwrap();
        assert!(due > ended + DELAY, "{due} vs {ended}");
        assert_eq!(store.next_due_ms(&Claim::Any).await.unwrap(), Some(due));
        let waiting = store.waiting(ended).await.unwrap();
        assert_eq!(waiting.items.len(), 1);
        assert_eq!(waiting.items[0].reason, HoldReason::RefetchDelay);
        assert_eq!(waiting.items[0].due_ms, due);
        assert!(
            store
                .claim_next(due - 1, &Claim::Any)
                .await
                .unwrap()
                .is_none()
        );

        // Failed, then `retry-failed` at once: still held.
        until(due).await;
        let a = store
            .claim_next(now_ms(), &Claim::Any)
            .await
            .unwrap()
            .unwrap();
        let failed_at = now_ms();
        store.mark_failed(&a, "gone", failed_at).await.unwrap();
        assert_eq!(store.retry_failed(None, None).await.unwrap(), (1, 0));
        let due = store.next_due_ms(&Claim::Any).await.unwrap().unwrap();
        assert!(due > failed_at + DELAY, "{due} vs {failed_at}");
        assert!(
            store
                .claim_next(due - 1, &Claim::Any)
                .await
                .unwrap()
                .is_none()
        );

        // A same-id block holds past refetch_delay, and says why.
        until(due).await;
        let a = store
            .claim_next(now_ms(), &Claim::Any)
            .await
            .unwrap()
            .unwrap();
        let blocked_until = now_ms() + 2_700_000;
        let due = store
            .mark_same_id_blocked(&a, "429 same data", blocked_until)
            .await
            .unwrap();
        assert_eq!(due, blocked_until);
        assert!(
            store
                .claim_next(due - 1, &Claim::Any)
                .await
                .unwrap()
                .is_none()
        );
        let waiting = store.waiting(now_ms()).await.unwrap();
        assert_eq!(waiting.items[0].reason, HoldReason::SameId);
        let (_, attempts, ..) = store
            .item_state(Source::Jmafile, "a")
            .await
            .unwrap()
            .unwrap();
        // `retry-failed` reset the attempts; the block gave the claim's back.
        assert_eq!(attempts, 0);
        store.close().await;
    }

    /// No pool of ours starts sqlx's maintenance task (see [`pool_options`]): once the stores
    /// are open and have answered, the runtime holds no task of theirs.
    #[tokio::test]
    async fn stores_leave_no_pool_maintenance_task_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let store = Store::open(&path).await.unwrap();
        store.status().await.unwrap();
        let reader = Store::open_read_only(&path).await.unwrap();
        reader.status().await.unwrap();
        // Connections go back to their pool through short tasks of their own; let them end.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(tasks, 0, "tasks alive beside two open stores");
        reader.close().await;
        store.close().await;
    }
}
