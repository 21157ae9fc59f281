//! The PostgreSQL state store: the second backend, for several nodes on one database (issue
//! 13). The same tables, triggers and promises as [`super::sqlite`], in PostgreSQL's terms; the
//! schema is `migrations-postgres/`, embedded.
//!
//! Where SQLite serializes writers (`BEGIN IMMEDIATE`), PostgreSQL lets them run side by side:
//! * a claim picks its row with `FOR UPDATE SKIP LOCKED` inside the transaction that claims it,
//!   so concurrent claimers (threads or nodes) never wait on each other nor get the same item;
//! * listing is `INSERT … ON CONFLICT DO NOTHING`, so two nodes listing the same id at once
//!   still store it once;
//! * the counts triggers lock their rows in one order, so opposite transitions cannot deadlock.
//!
//! The connection URL may carry a password; it is never shown: [`PgTarget::shown`] is the URL
//! with the password replaced by `***`, and that is what every error names.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgPool, Row};

use super::prelude::*;
use super::{
    Claim, Claimed, Committed, Cursor, CursorStatus, FileDigest, HoldReason, HookJob, HookOutcome,
    ItemStatus, LEASE, NewItem, NodeId, RecentError, Source, StateCount, StatusReport, StoreError,
    TypeMatch, WAITING_LISTED, Waiting, WaitingCount, WaitingItem, now_ms,
};

mod cluster;
pub mod copy;
mod cursors;
pub mod monitor;
mod queue;
mod reports;
mod runs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-postgres");

/// `download.refetch_delay`'s default, used by a store nobody configured (the polite side).
const DEFAULT_REFETCH_MS: i64 = 60_000;

/// How long opening the store waits for the server before it reports it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL database to open: the parsed URL (password included, from the URL, a file or a
/// systemd credential), and how to name it without the password.
#[derive(Clone)]
pub struct PgTarget {
    options: PgConnectOptions,
    shown: String,
    server: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// Parses a `postgres://` or `postgresql://` URL (sslmode, sslrootcert and the other libpq
    /// parameters included). `password` (from a file or credential) is used when the URL has
    /// none. The error is a message for the operator, without the password.
    pub fn parse(url: &str, password: Option<&str>) -> Result<PgTarget, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let shown = redact(url);
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "{shown}: a database URL starts with postgres:// or postgresql://"
            ));
        }
        let host = parsed.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("{shown}: no host (postgres://user@host:5432/db)"));
        }
        let port = parsed.port().unwrap_or(5432);
        let mut options = PgConnectOptions::from_str(url).map_err(|e| {
            let text = e.to_string();
            let text = match parsed.password() {
                Some(p) if !p.is_empty() => text.replace(p, "***"),
                _ => text,
            };
            format!("{shown}: {text}")
        })?;
        if parsed.password().is_none()
            && let Some(p) = password
        {
            options = options.password(p);
        }
        Ok(PgTarget {
            options: options.application_name("jma-poller"),
            server: format!("{host}:{port}"),
            shown,
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// The URL with its password (if any) replaced by `***`; a string that is no URL is shown as
/// `postgres://***` rather than risk echoing a secret.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "postgres://***".to_owned(),
    }
}

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
pub struct PgStore {
    pool: PgPool,
    /// `hooks.on_file` is set: every item marked done also gets a hook row.
    hooks: bool,
    /// `download.refetch_delay` in ms: each request of an id holds it back this long.
    refetch_ms: i64,
    /// The node this handle claims as.
    node: NodeId,
}

/// Connections are not reaped (no idle timeout or lifetime): as for SQLite, that keeps sqlx
/// 0.9.0's maintenance task (launchbadge/sqlx#3645) from ever starting. A connection the server
/// dropped (a restart) is found by the ping sqlx makes before handing it out, and replaced.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(true)
}

impl PgStore {
    /// Connects and brings the schema up to date.
    pub async fn open(target: &PgTarget) -> Result<PgStore, StoreError> {
        let pool = connect(target, 8, false).await?;
        // Another program's database: tables, but not ours. Refuse to add ours beside them.
        let (tables, ours): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE table_name = '_sqlx_migrations')
             FROM information_schema.tables WHERE table_schema = current_schema()",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| open_error(target, e))?;
        if tables > 0 && ours == 0 {
            pool.close().await;
            return Err(StoreError::Foreign {
                path: target.shown.clone().into(),
            });
        }
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: target.shown.clone().into(),
                source: Box::new(source),
            })?;
        Ok(PgStore::new(pool))
    }

    /// Connects for reading only (`status` while the daemon runs): every transaction is read
    /// only, and the schema must already be there.
    pub async fn open_read_only(target: &PgTarget) -> Result<PgStore, StoreError> {
        let pool = connect(target, 2, true).await?;
        let ours: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name IN ('items', 'cursors')",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| open_error(target, e))?;
        if ours != 2 {
            pool.close().await;
            return Err(StoreError::Missing {
                path: target.shown.clone().into(),
            });
        }
        Ok(PgStore::new(pool))
    }

    fn new(pool: PgPool) -> PgStore {
        PgStore {
            pool,
            hooks: false,
            refetch_ms: DEFAULT_REFETCH_MS,
            node: NodeId::from_host(),
        }
    }

    /// Records a hook run for every item marked done from now on (`hooks.on_file` is set).
    pub fn with_hooks(mut self, enabled: bool) -> PgStore {
        self.hooks = enabled;
        self
    }

    /// Claims as `node` from now on.
    pub fn with_node(mut self, node: NodeId) -> PgStore {
        self.node = node;
        self
    }

    /// Each request of an id holds the id back this long (`download.refetch_delay`).
    pub fn with_refetch_delay(mut self, delay: Duration) -> PgStore {
        self.refetch_ms = delay.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// The hold an attempt ending now leaves (see the SQLite store's).
    fn hold_after_attempt(&self) -> i64 {
        now_ms() + 1 + self.refetch_ms
    }

    /// The pool (tests of this backend).
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn connect(target: &PgTarget, max: u32, read_only: bool) -> Result<PgPool, StoreError> {
    let mut options = target.options.clone();
    if read_only {
        options = options.options([("default_transaction_read_only", "on")]);
    }
    // One connection first: the pool reports only "timed out" when the server cannot be
    // reached, this says why (refused, no such host, TLS, password).
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&options))
        .await
        .map_err(|_| open_error(target, sqlx::Error::PoolTimedOut))?
        .map_err(|e| open_error(target, e))?;
    probe.close().await.map_err(|e| open_error(target, e))?;
    pool_options(max)
        .connect_with(options)
        .await
        .map_err(|e| open_error(target, e))
}

/// An error opening the store, naming the server and the URL without its password.
fn open_error(target: &PgTarget, e: sqlx::Error) -> StoreError {
    StoreError::Unreachable {
        target: target.shown.clone(),
        server: target.server.clone(),
        source: Box::new(e),
    }
}

impl StateStore for PgStore {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn for_node(&self, node: NodeId) -> PgStore {
        self.clone().with_node(node)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Inserts listed items (skipping known ids) inside `tx`.
pub(super) async fn insert_items(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    items: &[NewItem],
    now: i64,
) -> Result<Committed, StoreError> {
    let mut done = Committed::default();
    for item in items {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM items WHERE source = $1 AND id = $2")
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
            let taken: Option<i64> = sqlx::query_scalar("SELECT seq FROM items WHERE path = $1")
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
        // Another node may list the same id at the same moment: the unique key decides, and
        // the loser counts it as a duplicate.
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO items (source, id, serial, classification, received_ms, url, plan,
                                state, priority, last_error, path, listed_ms, finished_ms,
                                type_name)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (source, id) DO NOTHING
             RETURNING seq",
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
        .fetch_optional(&mut **tx)
        .await?;
        if inserted.is_none() {
            done.duplicates += 1;
            done.new.push(false);
            continue;
        }
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
        "items.seq, items.source, items.id, items.serial, items.classification, \
         items.received_ms, items.url, items.plan, items.path, items.attempts, items.throttles, \
         items.fencing"
    };
}
pub(super) use claimed_columns;

/// [`LEASE`] in ms, as the columns count.
pub(super) fn lease_ms() -> i64 {
    LEASE.as_millis() as i64
}

pub(super) fn claimed_from_row(row: &PgRow) -> Result<Claimed, StoreError> {
    let id: String = row.try_get("id")?;
    let bad = |detail: String| StoreError::BadRow {
        id: id.clone(),
        detail,
    };
    let source: String = row.try_get("source")?;
    let plan: String = row.try_get("plan")?;
    Ok(Claimed {
        seq: row.try_get("seq")?,
        source: Source::parse(&source).ok_or_else(|| bad(format!("unknown source {source:?}")))?,
        serial: row.try_get::<Option<i64>, _>("serial")?.map(|s| s as u64),
        classification: row.try_get("classification")?,
        received_ms: row.try_get("received_ms")?,
        url: row.try_get("url")?,
        plan: serde_json::from_str(&plan).map_err(|e| bad(format!("plan: {e}")))?,
        path: row
            .try_get::<Option<String>, _>("path")?
            .ok_or_else(|| bad("no path".into()))?,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        throttles: row.try_get::<i64, _>("throttles")?.max(0) as u32,
        fencing: row.try_get("fencing")?,
        id,
    })
}

#[cfg(test)]
mod tests;
