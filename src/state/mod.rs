//! The state store: the only module with SQL. One SQLite file (WAL, `synchronous=FULL`) holds
//! the poll cursor, every listed item with its download state, and the log of body requests.
//!
//! Promises:
//! * every write is one transaction, and writers take the lock up front (`BEGIN IMMEDIATE`),
//!   so concurrent processes (the daemon, `status`, `backfill`) wait instead of failing;
//! * inserts are idempotent on `(source, id)`: listing an item twice never downloads it twice;
//! * progress lives in rows, not in memory, so a restart (even after `kill -9`) resumes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::download::plan::Plan;

mod monitor;
pub use monitor::{DamagedRepair, FileDigest, FreshnessRow, VerifyItem};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage.database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("storage.database {}: cannot apply the schema: {source} (is this a jma-poller database from a newer version, or another program's file?)", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("storage.database {}: this is another program's SQLite database (it has tables but no jma-poller schema); refusing to touch it. Point storage.database elsewhere", path.display())]
    Foreign { path: PathBuf },
    #[error("storage.database {}: no database yet (the daemon creates it on first start)", path.display())]
    Missing { path: PathBuf },
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database row for item {id}: {detail}")]
    BadRow { id: String, detail: String },
}

/// No retry is ever scheduled this far ahead (the longest backoff is under an hour). An item
/// due later than this was scheduled before the wall clock went back, and is due now: a clock
/// jump must not stall the queue.
pub const CLOCK_JUMP_MS: i64 = 7_200_000;

/// A request recorded more than this in the future was recorded before the wall clock went
/// back: its hold is ignored rather than trusted to stall the item for the size of the jump.
pub const CLOCK_BACK_MS: i64 = 5_000;

/// `download.refetch_delay`'s default, used by a store nobody configured (the polite side).
const DEFAULT_REFETCH_MS: i64 = 60_000;

/// At most this many waiting ids are listed by [`Store::waiting`] (`status`); the rest are
/// counted.
pub const WAITING_LISTED: i64 = 20;

/// Milliseconds since the Unix epoch, the time unit of every column.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Jmafile,
    Archive,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Jmafile => "jmafile",
            Source::Archive => "archive",
        }
    }
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "jmafile" => Some(Source::Jmafile),
            "archive" => Some(Source::Archive),
            _ => None,
        }
    }
}

/// The PuLL position of one list endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// nextPooling for the next head poll; `None` = list without a cursor (baseline).
    pub token: Option<String>,
    /// Filters the token was obtained with, as JSON; resent with it.
    pub query: String,
    /// Watermark: every item up to this serial is recorded.
    pub high_serial: Option<u64>,
    pub last_received_ms: Option<i64>,
    pub interval_ms: Option<i64>,
    pub last_poll_ms: Option<i64>,
    /// nextToken of a backlog still being paged back.
    pub backlog_token: Option<String>,
    /// nextPooling to adopt once the backlog is done.
    pub backlog_pooling: Option<String>,
    /// Highest serial of the backlog's head page (the watermark once it is done).
    pub backlog_high: Option<u64>,
}

/// A listed item to record. `refused` items are stored as failed right away.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub source: Source,
    pub id: String,
    pub serial: Option<u64>,
    pub classification: String,
    pub received_ms: Option<i64>,
    pub url: String,
    pub plan: Option<Plan>,
    pub path: Option<String>,
    pub refused: Option<String>,
    /// A jmafile item's data identifier (HEADER_VALUES); None for archives.
    pub type_name: Option<String>,
}

/// Which of the mirror's items a jmafile stream's entry covers (see [`Store::newest_listed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeMatch {
    /// Every jmafile item.
    Any,
    Prefix(String),
    Exact(String),
}

/// Which queued items a worker may take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Claim {
    #[default]
    Any,
    /// Reserved for the live stream, so long archive downloads never hold every worker.
    JmafileOnly,
    /// One classification's archives for dates in `[from_ms, to_ms]` (the `backfill` command).
    Archives {
        classification: String,
        from_ms: i64,
        to_ms: i64,
    },
}

impl Claim {
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

/// An item claimed for download.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub source: Source,
    pub id: String,
    pub serial: Option<u64>,
    pub classification: String,
    pub received_ms: Option<i64>,
    pub url: String,
    pub plan: Plan,
    pub path: String,
    pub attempts: u32,
    /// 429 answers so far (they never use up attempts).
    pub throttles: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StateCount {
    pub source: String,
    pub state: String,
    pub items: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub source: String,
    pub id: String,
    pub classification: String,
    pub state: String,
    pub attempts: i64,
    pub error: String,
    pub at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CursorStatus {
    pub name: String,
    /// The `type` values the stream sends (empty: everything), from the stored filters.
    pub types: Vec<String>,
    pub has_token: bool,
    /// A backlog is being paged back.
    pub backlog: bool,
    /// receivedTime of the newest item the stream has listed (how far it has come).
    pub last_received_ms: Option<i64>,
    pub high_serial: Option<i64>,
    pub interval_ms: Option<i64>,
    pub last_poll_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
}

/// Why an item is held back before its url may be requested again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// `download.refetch_delay` after the previous request of the same id.
    RefetchDelay,
    /// The data host blocked this id (429 "same data"): `download.same_id_backoff`.
    SameId,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::RefetchDelay => "refetch_delay",
            HoldReason::SameId => "same_id",
        }
    }
    fn parse(s: &str) -> Option<HoldReason> {
        match s {
            "refetch_delay" => Some(HoldReason::RefetchDelay),
            "same_id" => Some(HoldReason::SameId),
            _ => None,
        }
    }
}

/// Items waiting on a hold, per reason.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingCount {
    pub reason: HoldReason,
    pub items: i64,
    /// When the first of them is due (unix ms).
    pub next_due_ms: i64,
}

/// One item waiting on a hold.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingItem {
    pub source: String,
    pub id: String,
    pub serial: Option<i64>,
    pub classification: String,
    pub reason: HoldReason,
    /// When it may be requested again (unix ms).
    pub due_ms: i64,
    pub last_request_ms: Option<i64>,
}

/// Items whose next request waits on `download.refetch_delay` or a same-id block.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Waiting {
    pub counts: Vec<WaitingCount>,
    /// The first [`WAITING_LISTED`] by due time.
    pub items: Vec<WaitingItem>,
    /// How many more wait beyond those listed.
    pub more: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub cursors: Vec<CursorStatus>,
    pub counts: Vec<StateCount>,
    /// Newest archive date on disk, per classification (JST midnight, unix ms).
    pub archive_newest: Vec<(String, i64)>,
    /// Hook runs by state (empty without hooks).
    pub hooks: Vec<(String, i64)>,
    pub last_landed_ms: Option<i64>,
    pub recent_errors: Vec<RecentError>,
    /// Ids held back before their next request.
    pub waiting: Waiting,
}

/// What `commit_poll` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    pub inserted: usize,
    pub refused: usize,
    pub duplicates: usize,
    /// Per input item: true if this call inserted it (false for a duplicate).
    pub new: Vec<bool>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// `hooks.on_file` is set: every item marked done also gets a hook row.
    hooks: bool,
    /// `download.refetch_delay` in ms: each request of an id holds it back this long.
    refetch_ms: i64,
}

/// How a hook run ended.
#[derive(Debug, Clone, Copy)]
pub enum HookOutcome<'a> {
    Done,
    Retry {
        code: Option<i32>,
        error: &'a str,
        at_ms: i64,
    },
    Failed {
        code: Option<i32>,
        error: &'a str,
    },
    /// Stopped by shutdown: back to the queue, the attempt not counted.
    Interrupted,
}

/// A hook run claimed by the runner.
#[derive(Debug, Clone)]
pub struct HookJob {
    pub seq: i64,
    pub attempts: u32,
    pub source: String,
    pub id: String,
    pub serial: Option<i64>,
    pub classification: String,
    pub path: String,
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

impl Store {
    /// Opens (creating if needed) the database and brings the schema up to date.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.to_owned(),
                source: sqlx::Error::Io(e),
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
                source,
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
            source,
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
                source,
            })?;
        Ok(Store {
            pool,
            hooks: false,
            refetch_ms: DEFAULT_REFETCH_MS,
        })
    }

    /// Records a hook run for every item marked done from now on (`hooks.on_file` is set).
    pub fn with_hooks(mut self, enabled: bool) -> Store {
        self.hooks = enabled;
        self
    }

    /// Each request of an id holds the id back this long (`download.refetch_delay`), from
    /// the claim and again from the end of the attempt.
    pub fn with_refetch_delay(mut self, delay: Duration) -> Store {
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
    pub async fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = pool_options(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        // A foreign file opens fine but has none of our tables: say so plainly.
        let ours: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('items', 'cursors')",
        )
        .fetch_one(&pool)
        .await
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        if ours != 2 {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: sqlx::Error::Protocol("not a jma-poller database".into()),
            });
        }
        Ok(Store {
            pool,
            hooks: false,
            refetch_ms: DEFAULT_REFETCH_MS,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn cursor(&self, name: &str) -> Result<Option<Cursor>, StoreError> {
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
    pub async fn commit_poll(
        &self,
        name: &str,
        cursor: &Cursor,
        items: &[NewItem],
        now: i64,
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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

    /// Records listed items without touching any cursor (the `backfill` command).
    pub async fn insert(&self, items: &[NewItem], now: i64) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = insert_items(&mut tx, items, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Notes a failed poll for `status`; the cursor itself is left alone.
    pub async fn record_poll_error(
        &self,
        name: &str,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
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
    pub async fn record_stream_error(
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
    pub async fn clear_cursor_token(&self, name: &str) -> Result<(), StoreError> {
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
    pub async fn jmafile_cursors(&self) -> Result<Vec<(String, Cursor)>, StoreError> {
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
    pub async fn rename_cursor(&self, from: &str, to: &str) -> Result<bool, StoreError> {
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
    pub async fn retire_jmafile_cursors(&self, keep: &[String]) -> Result<Vec<String>, StoreError> {
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
    pub async fn newest_listed(
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

    /// Claims the next due item (jmafile before archives, oldest first) and logs the body
    /// request it is about to make, in one transaction. The same transaction records the
    /// request on the row and holds the id back for `refetch_delay`, before anything is sent;
    /// an item still held by an earlier request (or a same-id block) is never claimed, however
    /// it came back to the queue.
    ///
    /// The queue queries name their partial indexes (`INDEXED BY`): left to itself the planner
    /// picked `items_state` and sorted every waiting row on each claim, which made draining a
    /// large backlog quadratic. Naming the index also makes a schema change that breaks it fail
    /// loudly instead of silently slowing down.
    pub async fn claim_next(&self, now: i64, claim: &Claim) -> Result<Option<Claimed>, StoreError> {
        let (jmafile_only, classification, from, to) = claim.params();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "UPDATE items SET state = 'fetching', attempts = attempts + 1, started_ms = ?1,
                              last_request_ms = ?1, hold_until_ms = ?1 + ?6,
                              hold_reason = 'refetch_delay'
             WHERE seq = (SELECT seq FROM items INDEXED BY items_queue
                          WHERE state = 'pending'
                            AND (next_attempt_ms <= ?1 OR next_attempt_ms > ?1 + 7200000) -- CLOCK_JUMP_MS
                            AND (hold_until_ms IS NULL OR hold_until_ms <= ?1
                                 OR hold_until_ms > ?1 + 7200000        -- CLOCK_JUMP_MS
                                 OR last_request_ms > ?1 + 5000)        -- CLOCK_BACK_MS
                            AND (?2 = 0 OR source = 'jmafile')
                            AND (?3 IS NULL OR (source = 'archive' AND classification = ?3
                                                AND received_ms BETWEEN ?4 AND ?5))
                          ORDER BY priority, received_ms, serial LIMIT 1)
             RETURNING seq, source, id, serial, classification, received_ms, url, plan, path, attempts,
                       throttles",
        )
        .bind(now)
        .bind(jmafile_only)
        .bind(classification)
        .bind(from)
        .bind(to)
        .bind(self.refetch_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query("INSERT INTO fetch_log (at_ms) VALUES (?)")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(claimed_from_row(&row)?))
    }

    /// Items a previous run left in `fetching` (it crashed or was killed mid-download).
    pub async fn in_flight(&self) -> Result<Vec<Claimed>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, source, id, serial, classification, received_ms, url, plan, path, attempts,
                    throttles
             FROM items WHERE state = 'fetching'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claimed_from_row).collect()
    }

    /// Marks an item done; with hooks on, its hook run is recorded in the same transaction, so
    /// no crash can land an item without its hook (at least once). The id stays held for
    /// refetch_delay, should anything ever queue it again.
    /// The SHA-256 of each file it wrote (`digests`, computed while streaming) is recorded in
    /// the same transaction, for `jma-poller verify`.
    pub async fn mark_done(
        &self,
        seq: i64,
        bytes: u64,
        now: i64,
        digests: &[FileDigest],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        monitor::replace_digests(&mut tx, seq, digests).await?;
        sqlx::query(
            "UPDATE items SET state = 'done', bytes = ?1, finished_ms = ?2, last_error = NULL,
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?3),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?3
                                                 THEN hold_reason ELSE 'refetch_delay' END
             WHERE seq = ?4",
        )
        .bind(bytes as i64)
        .bind(now)
        .bind(self.hold_after_attempt())
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        if self.hooks {
            sqlx::query(
                "INSERT INTO hooks (seq, state) VALUES (?, 'pending') ON CONFLICT (seq) DO NOTHING",
            )
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims the next due hook run, with what the command needs to know about its item.
    pub async fn claim_hook(&self, now: i64) -> Result<Option<HookJob>, StoreError> {
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
    pub async fn finish_hook(
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
    pub async fn requeue_running_hooks(&self) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE hooks SET state = 'pending' WHERE state = 'running'")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    pub async fn next_hook_due_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT MIN(next_attempt_ms) FROM hooks WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Back to the queue after an attempt, due at `next_ms` or when the id's hold ends,
    /// whichever is later: the attempt just made holds the id for refetch_delay from now.
    /// `count_attempt = false` undoes the claim's attempt (shutdown, a full disk or a refused
    /// key are not the item's fault). Returns when the item is due.
    pub async fn mark_retry(
        &self,
        seq: i64,
        error: Option<&str>,
        next_ms: i64,
        count_attempt: bool,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending',
                              next_attempt_ms = MAX(?1, COALESCE(hold_until_ms, 0), ?2),
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?2),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?2
                                                 THEN hold_reason ELSE 'refetch_delay' END,
                              last_error = COALESCE(?3, last_error),
                              attempts = attempts - ?4
             WHERE seq = ?5
             RETURNING next_attempt_ms",
        )
        .bind(next_ms)
        .bind(self.hold_after_attempt())
        .bind(error)
        .bind(if count_attempt { 0i64 } else { 1 })
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(next_ms))
    }

    /// Back to the queue after a 429: the attempt is given back and the throttle counted.
    /// Due at `next_ms` or when the id's hold ends, whichever is later (returned).
    pub async fn mark_throttled(
        &self,
        seq: i64,
        error: &str,
        next_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending',
                              next_attempt_ms = MAX(?1, COALESCE(hold_until_ms, 0), ?2),
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?2),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?2
                                                 THEN hold_reason ELSE 'refetch_delay' END,
                              last_error = ?3,
                              attempts = attempts - 1, throttles = throttles + 1
             WHERE seq = ?4
             RETURNING next_attempt_ms",
        )
        .bind(next_ms)
        .bind(self.hold_after_attempt())
        .bind(error)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(next_ms))
    }

    /// Back to the queue after the data host blocked this id (429 "same data"): held until
    /// `until_ms` (at least refetch_delay from now), the attempt given back; nothing else
    /// about the item changes. Returns when the item is due.
    pub async fn mark_same_id_blocked(
        &self,
        seq: i64,
        error: &str,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE items SET state = 'pending',
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?1, ?2),
                              next_attempt_ms = MAX(next_attempt_ms, COALESCE(hold_until_ms, 0), ?1, ?2),
                              hold_reason = 'same_id',
                              last_error = ?3,
                              attempts = attempts - 1
             WHERE seq = ?4
             RETURNING next_attempt_ms",
        )
        .bind(until_ms)
        .bind(self.hold_after_attempt())
        .bind(error)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(until_ms))
    }

    /// Back to the queue without an attempt ending here (crash recovery: a previous run left it
    /// `fetching`). The hold its claim wrote still applies; the attempt stays counted.
    pub async fn requeue(&self, seq: i64, error: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE items SET state = 'pending', next_attempt_ms = 0,
                              last_error = COALESCE(?, last_error)
             WHERE seq = ?",
        )
        .bind(error)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Puts failed items back in the queue with fresh attempts (after the operator fixed the
    /// cause). Items refused at listing (unsafe names, untrusted hosts) have no download plan
    /// and stay failed. Each still waits out the hold of its last request (refetch_delay).
    /// Returns (queued again, left failed).
    pub async fn retry_failed(
        &self,
        source: Option<Source>,
        classification: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let queued = sqlx::query(
            "UPDATE items SET state = 'pending', attempts = 0, throttles = 0, next_attempt_ms = 0,
                              last_error = NULL, finished_ms = NULL
             WHERE state = 'failed' AND plan != 'null'
               AND (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR classification = ?2)",
        )
        .bind(source.map(Source::as_str))
        .bind(classification)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM items WHERE state = 'failed'
               AND (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR classification = ?2)",
        )
        .bind(source.map(Source::as_str))
        .bind(classification)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((queued, left as u64))
    }

    /// Marks an item failed for good. The id stays held for refetch_delay, so `retry-failed`
    /// right after does not request it again at once.
    pub async fn mark_failed(&self, seq: i64, error: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE items SET state = 'failed', last_error = ?1, finished_ms = ?2,
                              hold_until_ms = MAX(COALESCE(hold_until_ms, 0), ?3),
                              hold_reason = CASE WHEN COALESCE(hold_until_ms, 0) >= ?3
                                                 THEN hold_reason ELSE 'refetch_delay' END
             WHERE seq = ?4",
        )
        .bind(error)
        .bind(now)
        .bind(self.hold_after_attempt())
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the earliest waiting item becomes due, if any item is waiting.
    pub async fn next_due_ms(&self, claim: &Claim) -> Result<Option<i64>, StoreError> {
        let (jmafile_only, classification, from, to) = claim.params();
        if *claim == Claim::Any {
            // Served by the items_due index alone.
            return Ok(sqlx::query_scalar(
                "SELECT MIN(next_attempt_ms) FROM items INDEXED BY items_due WHERE state = 'pending'",
            )
            .fetch_one(&self.pool)
            .await?);
        }
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_ms FROM items INDEXED BY items_due
             WHERE state = 'pending'
               AND (?1 = 0 OR source = 'jmafile')
               AND (?2 IS NULL OR (source = 'archive' AND classification = ?2
                                   AND received_ms BETWEEN ?3 AND ?4))
             ORDER BY next_attempt_ms LIMIT 1",
        )
        .bind(jmafile_only)
        .bind(classification)
        .bind(from)
        .bind(to)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Waiting items whose next request waits on a hold (refetch_delay or a same-id block)
    /// rather than on a longer backoff: counts per reason and the first [`WAITING_LISTED`] by
    /// due time. Reads only the held rows (`items_held`), so it costs the same with a million
    /// items.
    pub async fn waiting(&self, now: i64) -> Result<Waiting, StoreError> {
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
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Items waiting or in flight, per source (cheap: only those rows are read).
    pub async fn queue_depth(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, SUM(items) AS n FROM counts WHERE state IN ('pending', 'fetching')
             GROUP BY source",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = vec![("jmafile", 0), ("archive", 0)];
        for r in rows {
            let source: String = r.get("source");
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == source) {
                slot.1 = r.get("n");
            }
        }
        Ok(out)
    }

    /// Items on disk (for the `files` gauge; read once at start, then counted up).
    pub async fn done_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(SUM(items), 0) FROM counts WHERE state = 'done'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Finished items (done or failed) received before `cutoff_ms`, oldest first: what
    /// retention may remove. Items still queued or in flight are never returned.
    pub async fn expired(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, path FROM items
             WHERE received_ms < ? AND state IN ('done', 'failed')
               AND NOT EXISTS (SELECT 1 FROM hooks h
                               WHERE h.seq = items.seq AND h.state IN ('pending', 'running'))
             ORDER BY received_ms LIMIT ?",
        )
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get("seq"), r.get("path")))
            .collect())
    }

    /// Deletes rows (after their files are gone), in one transaction.
    pub async fn delete_items(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        let list = serde_json::to_string(seqs).unwrap_or_else(|_| "[]".into());
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query(
            "DELETE FROM items WHERE seq IN (SELECT value FROM json_each(?))
               AND state IN ('done', 'failed')",
        )
        .bind(list)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Which of `ids` are already recorded for `source`.
    pub async fn known_ids(
        &self,
        source: Source,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let list = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM items WHERE source = ? AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(source.as_str())
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Archives of one classification with dates in `[from_ms, to_ms]`, counted by state.
    pub async fn archive_progress(
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

    /// Body requests started since `since_ms` (to restore the data budget after a restart),
    /// pruning entries older than a day.
    pub async fn recent_fetches(&self, since_ms: i64, now: i64) -> Result<Vec<i64>, StoreError> {
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

    pub async fn status(&self) -> Result<StatusReport, StoreError> {
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
    pub async fn item_state(
        &self,
        source: Source,
        id: &str,
    ) -> Result<Option<(String, i64, Option<String>, Option<String>)>, StoreError> {
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
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every done item's path and bytes (to compare the database with the disk).
    pub async fn done_paths(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
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

/// Inserts listed items (skipping known ids) inside `tx`.
async fn insert_items(
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
                let unique = crate::download::plan::disambiguate(p, &item.id);
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
        .bind(match item.source {
            Source::Jmafile => 0i64,
            Source::Archive => 1,
        })
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

fn claimed_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Claimed, StoreError> {
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
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        use crate::download::plan::{Compression, Layout};
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
        store.requeue(a.seq, None).await.unwrap();
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
        let due = store
            .mark_retry(a.seq, Some("broken"), 0, true)
            .await
            .unwrap();
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
        store.mark_failed(a.seq, "gone", failed_at).await.unwrap();
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
            .mark_same_id_blocked(a.seq, "429 same data", blocked_until)
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
