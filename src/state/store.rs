//! [`Store`]: the backend the daemon runs on, chosen by `storage.database` ([`DatabaseTarget`]):
//! a path is SQLite (the default), a `postgres://` URL PostgreSQL. Every trait and inherent
//! method is the backend's own, by delegation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::copy::{Cell, Rows, Table};
use super::postgres::copy::PgImport;
use super::postgres::{PgStore, PgTarget};
use super::prelude::*;
use super::sqlite::SqliteStore;
use super::sqlite::copy::SqliteImport;
use super::{
    Claim, Claimed, Committed, Cursor, DamagedRepair, FileDigest, FreshnessRow, HookJob,
    HookOutcome, ItemStatus, LeaderRow, Leadership, NewItem, NodeId, NodeRow, NodeTaken, Source,
    StatusReport, StoreError, TypeMatch, VerifyItem, Waiting,
};

/// Where the state lives (`storage.database`).
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PgTarget>),
}

impl DatabaseTarget {
    /// How to name it to an operator (a PostgreSQL URL without its password).
    pub fn shown(&self) -> String {
        match self {
            DatabaseTarget::Sqlite(p) => p.display().to_string(),
            DatabaseTarget::Postgres(t) => t.shown().to_owned(),
        }
    }

    /// The SQLite file, if that is the backend.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            DatabaseTarget::Sqlite(p) => Some(p),
            DatabaseTarget::Postgres(_) => None,
        }
    }
}

impl From<&Path> for DatabaseTarget {
    fn from(p: &Path) -> DatabaseTarget {
        DatabaseTarget::Sqlite(p.to_owned())
    }
}

impl From<&PathBuf> for DatabaseTarget {
    fn from(p: &PathBuf) -> DatabaseTarget {
        DatabaseTarget::Sqlite(p.clone())
    }
}

impl From<PathBuf> for DatabaseTarget {
    fn from(p: PathBuf) -> DatabaseTarget {
        DatabaseTarget::Sqlite(p)
    }
}

impl From<&DatabaseTarget> for DatabaseTarget {
    fn from(t: &DatabaseTarget) -> DatabaseTarget {
        t.clone()
    }
}

impl From<PgTarget> for DatabaseTarget {
    fn from(t: PgTarget) -> DatabaseTarget {
        DatabaseTarget::Postgres(Box::new(t))
    }
}

/// The state store the daemon runs on.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Runs `$e` with `$s` bound to whichever backend `$self` is.
macro_rules! delegate {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

/// The same builder call on whichever backend, keeping the variant.
macro_rules! rebuild {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => Store::Sqlite($e),
            Store::Postgres($s) => Store::Postgres($e),
        }
    };
}

impl Store {
    /// Opens (creating a SQLite file if needed) the store and brings its schema up to date.
    pub async fn open(target: impl Into<DatabaseTarget>) -> Result<Store, StoreError> {
        Ok(match target.into() {
            DatabaseTarget::Sqlite(p) => Store::Sqlite(SqliteStore::open(&p).await?),
            DatabaseTarget::Postgres(t) => Store::Postgres(PgStore::open(&t).await?),
        })
    }

    /// Opens an existing store for reading only (`status` while the daemon runs).
    pub async fn open_read_only(target: impl Into<DatabaseTarget>) -> Result<Store, StoreError> {
        Ok(match target.into() {
            DatabaseTarget::Sqlite(p) => Store::Sqlite(SqliteStore::open_read_only(&p).await?),
            DatabaseTarget::Postgres(t) => Store::Postgres(PgStore::open_read_only(&t).await?),
        })
    }

    /// Records a hook run for every item marked done from now on (`hooks.on_file` is set).
    pub fn with_hooks(self, enabled: bool) -> Store {
        rebuild!(self, s => s.with_hooks(enabled))
    }

    /// Claims as `node` from now on.
    pub fn with_node(self, node: NodeId) -> Store {
        rebuild!(self, s => s.with_node(node))
    }

    /// Each request of an id holds the id back this long (`download.refetch_delay`).
    pub fn with_refetch_delay(self, delay: Duration) -> Store {
        rebuild!(self, s => s.with_refetch_delay(delay))
    }

    /// Every freshness row.
    pub async fn freshness(&self) -> Result<Vec<FreshnessRow>, StoreError> {
        delegate!(self, s => s.freshness().await)
    }

    /// Items landed per hour over the last `hours` hours up to `now`.
    pub async fn landings_per_hour(&self, now: i64, hours: i64) -> Result<Vec<i64>, StoreError> {
        delegate!(self, s => s.landings_per_hour(now, hours).await)
    }

    /// Up to `limit` done items with seq above `after`, with their recorded files.
    pub async fn done_items_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<VerifyItem>, StoreError> {
        delegate!(self, s => s.done_items_after(after, limit).await)
    }

    /// Records what `verify` found for items that had no files recorded.
    pub async fn record_first_digests(
        &self,
        found: &[(i64, Vec<FileDigest>)],
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.record_first_digests(found).await)
    }

    /// Which of `paths` are some item's path.
    pub async fn owned_paths(&self, paths: &[String]) -> Result<HashSet<String>, StoreError> {
        delegate!(self, s => s.owned_paths(paths).await)
    }

    /// The item whose path is the folder `path`, if any.
    pub async fn item_at(&self, path: &str) -> Result<Option<(i64, bool)>, StoreError> {
        delegate!(self, s => s.item_at(path).await)
    }

    /// Which of `names` are recorded files of item `seq`.
    pub async fn recorded_names(
        &self,
        seq: i64,
        names: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        delegate!(self, s => s.recorded_names(seq, names).await)
    }

    /// Whether item `seq` is still done.
    pub async fn still_done(&self, seq: i64) -> Result<bool, StoreError> {
        delegate!(self, s => s.still_done(seq).await)
    }

    /// Queues a damaged item again (`verify --repair`).
    pub async fn requeue_damaged(
        &self,
        seq: i64,
        reason: &str,
    ) -> Result<DamagedRepair, StoreError> {
        delegate!(self, s => s.requeue_damaged(seq, reason).await)
    }
}

impl Store {
    /// The rows of `table` that `rows` selects (`state copy`).
    pub async fn export_rows(
        &self,
        table: &Table,
        rows: Rows,
    ) -> Result<Vec<Vec<Cell>>, StoreError> {
        delegate!(self, s => s.export_rows(table, rows).await)
    }

    /// Starts importing a copy: one transaction until [`Import::commit`].
    pub async fn begin_import(&self) -> Result<Import, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => Import::Sqlite(s.begin_import().await?),
            Store::Postgres(s) => Import::Postgres(s.begin_import().await?),
        })
    }
}

/// The target's side of `state copy`: one open transaction on either backend.
pub enum Import {
    Sqlite(SqliteImport),
    Postgres(PgImport),
}

impl Import {
    /// What the target already holds (items, cursors), if anything: a copy never merges.
    pub async fn contents(&mut self) -> Result<Option<String>, StoreError> {
        match self {
            Import::Sqlite(i) => i.contents().await,
            Import::Postgres(i) => i.contents().await,
        }
    }

    /// Inserts `rows` of `table` through the target's schema.
    pub async fn insert_rows(
        &mut self,
        table: &Table,
        rows: &[Vec<Cell>],
    ) -> Result<(), StoreError> {
        match self {
            Import::Sqlite(i) => i.insert_rows(table, rows).await,
            Import::Postgres(i) => i.insert_rows(table, rows).await,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Import::Sqlite(i) => i.commit().await,
            Import::Postgres(i) => i.commit().await,
        }
    }

    pub async fn rollback(self) {
        match self {
            Import::Sqlite(i) => i.rollback().await,
            Import::Postgres(i) => i.rollback().await,
        }
    }
}

impl CursorStore for Store {
    async fn cursor(&self, name: &str) -> Result<Option<Cursor>, StoreError> {
        delegate!(self, s => s.cursor(name).await)
    }

    async fn commit_poll(
        &self,
        name: &str,
        cursor: &Cursor,
        items: &[NewItem],
        now: i64,
        fence: Option<&Leadership>,
    ) -> Result<Committed, StoreError> {
        delegate!(self, s => s.commit_poll(name, cursor, items, now, fence).await)
    }

    async fn record_poll_error(&self, name: &str, error: &str, now: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.record_poll_error(name, error, now).await)
    }

    async fn record_stream_error(
        &self,
        name: &str,
        query: &str,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.record_stream_error(name, query, error, now).await)
    }

    async fn clear_cursor_token(&self, name: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.clear_cursor_token(name).await)
    }

    async fn jmafile_cursors(&self) -> Result<Vec<(String, Cursor)>, StoreError> {
        delegate!(self, s => s.jmafile_cursors().await)
    }

    async fn rename_cursor(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.rename_cursor(from, to).await)
    }

    async fn retire_jmafile_cursors(&self, keep: &[String]) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.retire_jmafile_cursors(keep).await)
    }

    async fn newest_listed(
        &self,
        entries: &[TypeMatch],
    ) -> Result<Vec<Option<(u64, i64)>>, StoreError> {
        delegate!(self, s => s.newest_listed(entries).await)
    }
}

impl QueueStore for Store {
    async fn insert(&self, items: &[NewItem], now: i64) -> Result<Committed, StoreError> {
        delegate!(self, s => s.insert(items, now).await)
    }

    async fn claim_next(&self, now: i64, claim: &Claim) -> Result<Option<Claimed>, StoreError> {
        delegate!(self, s => s.claim_next(now, claim).await)
    }

    async fn renew_claim(&self, item: &Claimed, now: i64) -> Result<bool, StoreError> {
        delegate!(self, s => s.renew_claim(item, now).await)
    }

    async fn own_claims(&self) -> Result<Vec<Claimed>, StoreError> {
        delegate!(self, s => s.own_claims().await)
    }

    async fn expired_claims(&self, now: i64) -> Result<Vec<Claimed>, StoreError> {
        delegate!(self, s => s.expired_claims(now).await)
    }

    async fn mark_done(
        &self,
        item: &Claimed,
        bytes: u64,
        now: i64,
        digests: &[FileDigest],
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.mark_done(item, bytes, now, digests).await)
    }

    async fn mark_retry(
        &self,
        item: &Claimed,
        error: Option<&str>,
        next_ms: i64,
        count_attempt: bool,
    ) -> Result<i64, StoreError> {
        delegate!(self, s => s.mark_retry(item, error, next_ms, count_attempt).await)
    }

    async fn mark_throttled(
        &self,
        item: &Claimed,
        error: &str,
        next_ms: i64,
    ) -> Result<i64, StoreError> {
        delegate!(self, s => s.mark_throttled(item, error, next_ms).await)
    }

    async fn mark_same_id_blocked(
        &self,
        item: &Claimed,
        error: &str,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        delegate!(self, s => s.mark_same_id_blocked(item, error, until_ms).await)
    }

    async fn requeue(&self, item: &Claimed, error: Option<&str>) -> Result<bool, StoreError> {
        delegate!(self, s => s.requeue(item, error).await)
    }

    async fn retry_failed(
        &self,
        source: Option<Source>,
        classification: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        delegate!(self, s => s.retry_failed(source, classification).await)
    }

    async fn mark_failed(&self, item: &Claimed, error: &str, now: i64) -> Result<bool, StoreError> {
        delegate!(self, s => s.mark_failed(item, error, now).await)
    }

    async fn next_due_ms(&self, claim: &Claim) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.next_due_ms(claim).await)
    }

    async fn known_ids(
        &self,
        source: Source,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        delegate!(self, s => s.known_ids(source, ids).await)
    }

    async fn expired(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        delegate!(self, s => s.expired(cutoff_ms, limit).await)
    }

    async fn delete_items(&self, seqs: &[i64]) -> Result<u64, StoreError> {
        delegate!(self, s => s.delete_items(seqs).await)
    }
}

impl ClusterStore for Store {
    async fn lead(
        &self,
        role: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<Leadership>, StoreError> {
        delegate!(self, s => s.lead(role, now, lease_ms).await)
    }

    async fn resign(&self, lead: &Leadership) -> Result<(), StoreError> {
        delegate!(self, s => s.resign(lead).await)
    }

    async fn leaders(&self) -> Result<Vec<LeaderRow>, StoreError> {
        delegate!(self, s => s.leaders().await)
    }

    async fn register_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
        force: bool,
    ) -> Result<Result<(), NodeTaken>, StoreError> {
        delegate!(self, s => s.register_node(instance, now, lease_ms, force).await)
    }

    async fn heartbeat_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.heartbeat_node(instance, now, lease_ms).await)
    }

    async fn deregister_node(&self, instance: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.deregister_node(instance).await)
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        delegate!(self, s => s.nodes().await)
    }

    async fn book_request(
        &self,
        budget: &str,
        now: i64,
        window_ms: i64,
        limit: i64,
    ) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.book_request(budget, now, window_ms, limit).await)
    }
}

impl FetchLog for Store {
    async fn recent_fetches(&self, since_ms: i64, now: i64) -> Result<Vec<i64>, StoreError> {
        delegate!(self, s => s.recent_fetches(since_ms, now).await)
    }
}

impl HookStore for Store {
    async fn claim_hook(&self, now: i64) -> Result<Option<HookJob>, StoreError> {
        delegate!(self, s => s.claim_hook(now).await)
    }

    async fn finish_hook(
        &self,
        seq: i64,
        outcome: HookOutcome<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.finish_hook(seq, outcome, now).await)
    }

    async fn requeue_running_hooks(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.requeue_running_hooks().await)
    }

    async fn next_hook_due_ms(&self) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.next_hook_due_ms().await)
    }
}

impl ReportStore for Store {
    async fn status(&self) -> Result<StatusReport, StoreError> {
        delegate!(self, s => s.status().await)
    }

    async fn waiting(&self, now: i64) -> Result<Waiting, StoreError> {
        delegate!(self, s => s.waiting(now).await)
    }

    async fn queue_depth(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        delegate!(self, s => s.queue_depth().await)
    }

    async fn done_count(&self) -> Result<i64, StoreError> {
        delegate!(self, s => s.done_count().await)
    }

    async fn archive_progress(
        &self,
        classification: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        delegate!(self, s => s.archive_progress(classification, from_ms, to_ms).await)
    }

    async fn item_state(&self, source: Source, id: &str) -> Result<Option<ItemStatus>, StoreError> {
        delegate!(self, s => s.item_state(source, id).await)
    }

    async fn done_paths(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        delegate!(self, s => s.done_paths().await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.ping().await)
    }

    async fn integrity_check(&self) -> Result<String, StoreError> {
        delegate!(self, s => s.integrity_check().await)
    }
}

impl StateStore for Store {
    fn node(&self) -> &NodeId {
        delegate!(self, s => s.node())
    }

    fn for_node(&self, node: NodeId) -> Store {
        rebuild!(self, s => s.for_node(node))
    }

    async fn close(&self) {
        delegate!(self, s => s.close().await)
    }
}
