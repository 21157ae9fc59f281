//! The state store: cursors, the download queue with its claims, the fetch log, hook runs and
//! reports, behind traits ([`StateStore`] and its parts), so a second backend is one module.
//! [`sqlite`] is the default backend, [`postgres`] the second (several nodes on one database);
//! they hold the only SQL in the crate, each with its migrations embedded. [`Store`] is the
//! backend the daemon runs on, chosen by `storage.database` ([`DatabaseTarget`]): a path is
//! SQLite, a `postgres://` URL PostgreSQL.
//!
//! Promises every backend keeps, checked by the `contract` suite (`src/state/contract.rs`):
//! * every write is one commit; listing is idempotent on `(source, id)`;
//! * a claim is exactly-once: it records its owner ([`NodeId`]) and a lease ([`LEASE`]) that
//!   the downloader renews; work in flight is known from rows, never from one process's memory,
//!   and an expired lease is what lets anyone take an item back;
//! * progress lives in the store, not in memory, so a restart (even after `kill -9`) resumes.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;

pub use crate::model::{
    Claim, Claimed, Cursor, HoldReason, ItemState, LEASE, LeaderRow, Leadership, NewItem, NodeId,
    NodeRow, NodeTaken, Source, TypeMatch, now_ms,
};

#[cfg(test)]
pub(crate) mod contract;
pub mod copy;
pub mod postgres;
pub mod sqlite;
mod store;

pub use store::{DatabaseTarget, Import, Store};

pub use sqlite::monitor::{DamagedRepair, FileDigest, FreshnessRow, VerifyItem};

/// The traits, for `use crate::state::prelude::*`.
pub mod prelude {
    pub use super::{
        ClusterStore, CursorStore, FetchLog, HookStore, QueueStore, ReportStore, StateStore,
    };
}

/// What a non-empty copy target holds (`state copy` refuses it), from its row counts.
fn copy_contents(items: i64, cursors: i64) -> Option<String> {
    match (items, cursors) {
        (0, 0) => None,
        (0, c) => Some(format!("{c} cursor(s)")),
        (i, 0) => Some(format!("{i} item(s)")),
        (i, c) => Some(format!("{i} item(s) and {c} cursor(s)")),
    }
}

/// A backend's own error, kept as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage.database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("storage.database {}: cannot apply the schema: {source} (is this a jma-poller database from a newer version, or another program's file?)", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("storage.database {}: this is another program's SQLite database (it has tables but no jma-poller schema); refusing to touch it. Point storage.database elsewhere", path.display())]
    Foreign { path: PathBuf },
    #[error("storage.database {}: no database yet (the daemon creates it on first start)", path.display())]
    Missing { path: PathBuf },
    /// Whatever the backend reports for a statement that failed.
    #[error("database: {0}")]
    Backend(#[source] BoxError),
    #[error("database row for item {id}: {detail}")]
    BadRow { id: String, detail: String },
    /// A database server that does not answer (or refuses us) at start. `target` is the URL
    /// without its password.
    #[error(
        "storage.database {target}: cannot connect to the PostgreSQL server at {server}: {source}"
    )]
    Unreachable {
        target: String,
        server: String,
        #[source]
        source: BoxError,
    },
    /// A commit carried a leadership token that is no longer current: another node took the
    /// role since (this one was paused, cut off or too slow to renew). Nothing was written.
    #[error(
        "lease on {role} lost (fencing token {fencing} is stale): another node leads it now; nothing was committed"
    )]
    Fenced { role: String, fencing: i64 },
}

/// No retry is ever scheduled this far ahead (the longest backoff is under an hour). An item
/// due later than this was scheduled before the wall clock went back, and is due now: a clock
/// jump must not stall the queue.
pub const CLOCK_JUMP_MS: i64 = 7_200_000;

/// A request recorded more than this in the future was recorded before the wall clock went
/// back: its hold is ignored rather than trusted to stall the item for the size of the jump.
pub const CLOCK_BACK_MS: i64 = 5_000;

/// At most this many waiting ids are listed by [`Store::waiting`] (`status`); the rest are
/// counted.
pub const WAITING_LISTED: i64 = 20;

/// (state, attempts, last error, path) of one item.
pub type ItemStatus = (String, i64, Option<String>, Option<String>);

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

/// The PuLL positions of the list endpoints (one row per stream), and what `status` says about
/// their last poll.
pub trait CursorStore {
    /// The cursor named `name`, if a poll ever committed one.
    fn cursor(&self, name: &str)
    -> impl Future<Output = Result<Option<Cursor>, StoreError>> + Send;

    /// Records one poll: the new items and the new cursor, in one commit, so a crash can never
    /// advance the cursor past items that were not saved. Idempotent on `(source, id)`.
    /// With `fence`, the commit happens only if that leadership is still the current one
    /// ([`StoreError::Fenced`] otherwise, nothing written): a poller that lost its lease while
    /// its list call was out can never move a cursor or list items after the new leader.
    fn commit_poll(
        &self,
        name: &str,
        cursor: &Cursor,
        items: &[NewItem],
        now: i64,
        fence: Option<&Leadership>,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// Notes a failed poll for `status`; the cursor itself is left alone.
    fn record_poll_error(
        &self,
        name: &str,
        error: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Like [`CursorStore::record_poll_error`], for a PuLL stream: a row made by the error
    /// carries the stream's filters, so `status` shows them.
    fn record_stream_error(
        &self,
        name: &str,
        query: &str,
        error: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops the cursor and any backlog token (after the API refused one), keeping the
    /// watermark, so the next poll lists without a cursor back to it.
    fn clear_cursor_token(&self, name: &str)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The jmafile PuLL cursors (`jmafile`, `jmafile:…`) with their state, by name.
    fn jmafile_cursors(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, Cursor)>, StoreError>> + Send;

    /// Gives a cursor another name; does nothing (false) if `to` exists.
    fn rename_cursor(
        &self,
        from: &str,
        to: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the jmafile cursors of streams no longer planned; returns their names.
    fn retire_jmafile_cursors(
        &self,
        keep: &[String],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// For each entry, the newest jmafile item the mirror holds for it: (serial, receivedTime
    /// ms), or None if it holds none.
    fn newest_listed(
        &self,
        entries: &[TypeMatch],
    ) -> impl Future<Output = Result<Vec<Option<(u64, i64)>>, StoreError>> + Send;
}

/// The download queue: listed items, their claims (owner + lease) and their transitions.
///
/// Every transition out of a claim (`mark_*`, `requeue`, `renew_claim`) names the claim it ends
/// ([`Claimed::fencing`]): it is refused (false, or a no-op) once the item was claimed again
/// by someone else, so a holder that lost its item cannot overwrite the new holder's work.
///
/// Claims: [`QueueStore::claim_next`] gives an item to this store's node for [`LEASE`]; the
/// downloader renews it while the body streams. An item whose lease ran out belongs to nobody:
/// [`QueueStore::expired_claims`] returns it (whoever held it) for adoption or the queue. At
/// start a node takes back its own claims at once ([`QueueStore::own_claims`]).
pub trait QueueStore {
    /// Records listed items without touching any cursor (the `backfill` command).
    fn insert(
        &self,
        items: &[NewItem],
        now: i64,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// Claims the next due item (jmafile before archives, oldest first) for this node, and logs
    /// the body request it is about to make, in one commit. An item still held by an earlier
    /// request (refetch_delay, a same-id block) is never claimed. Exactly once: two claimers
    /// never get the same item while its lease runs.
    fn claim_next(
        &self,
        now: i64,
        claim: &Claim,
    ) -> impl Future<Output = Result<Option<Claimed>, StoreError>> + Send;

    /// Extends a claim's lease to `now` + [`LEASE`]. False if the claim is no longer this
    /// holder's (its lease ran out and the item was taken back or claimed again).
    fn renew_claim(
        &self,
        item: &Claimed,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Items this node holds (or that an older schema left in flight without an owner): what a
    /// previous run of this node was downloading when it stopped.
    fn own_claims(&self) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Items in flight whose lease ran out before `now`, whoever held them.
    fn expired_claims(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Marks an item done; with hooks on, its hook run is recorded in the same commit. The id
    /// stays held for refetch_delay, should anything ever queue it again.
    /// The size and SHA-256 of each file it wrote (`digests`, computed while streaming) are
    /// recorded in the same commit, for `jma-poller verify`.
    fn mark_done(
        &self,
        item: &Claimed,
        bytes: u64,
        now: i64,
        digests: &[FileDigest],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Back to the queue after an attempt, due at `next_ms` or when the id's hold ends,
    /// whichever is later (returned). `count_attempt = false` gives the claim's attempt back.
    fn mark_retry(
        &self,
        item: &Claimed,
        error: Option<&str>,
        next_ms: i64,
        count_attempt: bool,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Back to the queue after a 429: the attempt given back, the throttle counted. Returns
    /// when the item is due.
    fn mark_throttled(
        &self,
        item: &Claimed,
        error: &str,
        next_ms: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Back to the queue after the data host blocked this id: held until `until_ms` (at least
    /// refetch_delay from now), the attempt given back. Returns when the item is due.
    fn mark_same_id_blocked(
        &self,
        item: &Claimed,
        error: &str,
        until_ms: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Back to the queue without an attempt ending here (its holder stopped), if `item` is
    /// still the claim it was: the hold its claim wrote still applies, the attempt stays
    /// counted. False if someone else took it meanwhile.
    fn requeue(
        &self,
        item: &Claimed,
        error: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Failed items (of `source`, `classification`) back in the queue with fresh attempts;
    /// items refused at listing stay failed. Returns (queued again, left failed).
    fn retry_failed(
        &self,
        source: Option<Source>,
        classification: Option<&str>,
    ) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;

    /// Marks an item failed for good (the id stays held for refetch_delay).
    fn mark_failed(
        &self,
        item: &Claimed,
        error: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// When the earliest waiting item `claim` may take becomes due, if any is waiting.
    fn next_due_ms(
        &self,
        claim: &Claim,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Which of `ids` are already recorded for `source`.
    fn known_ids(
        &self,
        source: Source,
        ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// Finished items (done or failed, no hook pending) received before `cutoff_ms`, oldest
    /// first, as (seq, path): what retention may remove.
    fn expired(
        &self,
        cutoff_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(i64, Option<String>)>, StoreError>> + Send;

    /// Deletes finished rows (after their files are gone), in one commit.
    fn delete_items(&self, seqs: &[i64]) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// When body requests were made, so the data budget survives a restart.
pub trait FetchLog {
    /// Body requests started since `since_ms`, pruning entries older than a day.
    fn recent_fetches(
        &self,
        since_ms: i64,
        now: i64,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;
}

/// What lets several nodes share one store: per-role leases with fencing tokens, the node
/// registry, and the request ledger that keeps the account's budgets whatever the number of
/// nodes. A single node uses the same paths (it simply always wins).
pub trait ClusterStore {
    /// Takes the lease on `role` for this node, or renews it if this node holds it, for
    /// `lease_ms` from `now`. None while another node holds a live lease. The fencing token
    /// changes whenever the lease is taken (never on a renewal), so a holder whose lease ran out
    /// is fenced out even if it takes the role back.
    fn lead(
        &self,
        role: &str,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<Option<Leadership>, StoreError>> + Send;

    /// Gives the lease up at once (a clean stop), if it is still `lead`: the next node takes
    /// over without waiting for it to run out.
    fn resign(&self, lead: &Leadership) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every role's lease, held or not.
    fn leaders(&self) -> impl Future<Output = Result<Vec<LeaderRow>, StoreError>> + Send;

    /// Registers this process as node [`StateStore::node`] (instance `instance`) until
    /// `now + lease_ms`. `Err(NodeTaken)` if another live instance holds the id; `force` takes
    /// it anyway (SQLite: the data dir's lock already proves the previous holder is gone).
    fn register_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
        force: bool,
    ) -> impl Future<Output = Result<Result<(), NodeTaken>, StoreError>> + Send;

    /// Extends this instance's registration; false if another instance took the id meanwhile.
    fn heartbeat_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends this instance's registration (a clean stop).
    fn deregister_node(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every registered node with the claims it holds.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeRow>, StoreError>> + Send;

    /// Books one request on the account's `budget` if fewer than `limit` were booked in the
    /// last `window_ms` (by any node); otherwise books nothing and returns when the oldest
    /// booking in the window leaves it. One commit, serialised between nodes.
    fn book_request(
        &self,
        budget: &str,
        now: i64,
        window_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}

/// The post-download hook queue (at least once per landed item).
pub trait HookStore {
    /// Claims the next due hook run, with what the command needs to know about its item.
    fn claim_hook(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Option<HookJob>, StoreError>> + Send;

    /// Records a hook run's outcome.
    fn finish_hook(
        &self,
        seq: i64,
        outcome: HookOutcome<'_>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Hook runs a stopped process left running go back to the queue.
    fn requeue_running_hooks(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// When the earliest waiting hook run is due.
    fn next_hook_due_ms(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}

/// What `status`, the gauges and the tests read: counts kept in step with the items, so they
/// cost the same with a million items as with ten.
pub trait ReportStore {
    /// Cursors, counts per source and state, hooks, recent errors, waiting ids.
    fn status(&self) -> impl Future<Output = Result<StatusReport, StoreError>> + Send;

    /// Items whose next request waits on a hold: counts per reason and the first
    /// [`WAITING_LISTED`] by due time.
    fn waiting(&self, now: i64) -> impl Future<Output = Result<Waiting, StoreError>> + Send;

    /// Items waiting or in flight, per source (every source listed, zeros included).
    fn queue_depth(
        &self,
    ) -> impl Future<Output = Result<Vec<(&'static str, i64)>, StoreError>> + Send;

    /// Items on disk.
    fn done_count(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Archives of one classification with dates in `[from_ms, to_ms]`, counted by state.
    fn archive_progress(
        &self,
        classification: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// State, attempts, error and path of one item (tests and diagnostics).
    fn item_state(
        &self,
        source: Source,
        id: &str,
    ) -> impl Future<Output = Result<Option<ItemStatus>, StoreError>> + Send;

    /// Every done item's (id, path, bytes), to compare the store with the disk.
    fn done_paths(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String, i64)>, StoreError>> + Send;

    /// A trivial query: is the store usable?
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The backend's own consistency check ("ok" when sound).
    fn integrity_check(&self) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// Everything the daemon needs from its state store. A backend is one module implementing
/// these traits, and passes the `contract` suite (`src/state/contract.rs`).
pub trait StateStore:
    CursorStore
    + QueueStore
    + FetchLog
    + HookStore
    + ReportStore
    + ClusterStore
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The node whose claims this handle makes.
    fn node(&self) -> &NodeId;

    /// A handle on the same store that claims as `node` (tests; several nodes, one store).
    fn for_node(&self, node: NodeId) -> Self;

    /// Closes the connections (waits for running statements).
    fn close(&self) -> impl Future<Output = ()> + Send;
}
