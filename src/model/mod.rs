//! The domain model: plain data every other part speaks, depending on nothing else in the crate
//! (so `state`, `download`, `poll`, `cli` and `sim` import it instead of each other).
//!
//! * [`Source`], [`ItemState`], [`HoldReason`]: what an item is and where it stands, as enums
//!   (the state store keeps them as free text: a new source needs no schema change);
//! * [`NewItem`] (a listed item to record), [`Claimed`] (an item taken for download), [`Claim`]
//!   (which items a worker may take), [`Cursor`] (a list endpoint's PuLL position);
//! * [`NodeId`] and [`LEASE`]: who holds a claim and for how long;
//! * [`plan`]: what to do with a body (compression, files, lengths) and layout keys;
//! * [`time`]: unix milliseconds and JST days.

pub mod plan;
pub mod time;

use std::time::Duration;

use serde::Serialize;

pub use plan::Plan;
pub use time::now_ms;

/// Where an item was listed. Stored as free text ([`Source::as_str`]); a third source is one
/// more variant here plus its poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Jmafile,
    Archive,
}

impl Source {
    /// Every source, in queue priority order.
    pub const ALL: [Source; 2] = [Source::Jmafile, Source::Archive];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Jmafile => "jmafile",
            Source::Archive => "archive",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|src| src.as_str() == s)
    }

    /// Queue priority: lower goes first (the live stream before archives).
    pub fn priority(self) -> i64 {
        match self {
            Source::Jmafile => 0,
            Source::Archive => 1,
        }
    }
}

/// The name of the archive poller's cursor row (the jmafile streams are `jmafile`,
/// `jmafile:{types}`).
pub const ARCHIVE_CURSOR: &str = "archive";

/// Where an item stands in its download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Waiting in the queue (maybe not due yet).
    Pending,
    /// Claimed by a node whose lease has not run out.
    Fetching,
    /// On disk, recorded.
    Done,
    /// Given up (refused at listing, or out of attempts); `retry-failed` queues it again.
    Failed,
}

impl ItemState {
    pub const ALL: [ItemState; 4] = [
        ItemState::Pending,
        ItemState::Fetching,
        ItemState::Done,
        ItemState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Fetching => "fetching",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ItemState> {
        ItemState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for ItemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    pub fn parse(s: &str) -> Option<HoldReason> {
        match s {
            "refetch_delay" => Some(HoldReason::RefetchDelay),
            "same_id" => Some(HoldReason::SameId),
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
    /// Final path relative to the data dir (the layout key), fixed at listing.
    pub path: Option<String>,
    pub refused: Option<String>,
    /// A jmafile item's data identifier (HEADER_VALUES); None for archives.
    pub type_name: Option<String>,
}

/// Which of the mirror's items a jmafile stream's entry covers.
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

/// An item claimed for download: held by one node until its lease runs out.
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
    /// Bumped by every claim of the row: a renewal or requeue carrying an older token comes
    /// from a holder that lost the item (its lease ran out and it was taken back).
    pub fencing: i64,
}

/// How long a claim holds an item without being renewed. The downloader renews it every
/// [`LEASE_RENEW`] while the body streams, so only a node that stopped (crash, hang, lost
/// database) lets it run out; then another node may take the item. Long enough that a busy
/// database or a paused VM does not lose a live claim; short enough that a dead node's items
/// wait minutes, not hours.
pub const LEASE: Duration = Duration::from_secs(5 * 60);

/// How often a running download renews its claim: a third of [`LEASE`], so two renewals may
/// fail before the lease runs out.
pub const LEASE_RENEW: Duration = Duration::from_secs(100);

/// A node's stable identity, written on each claim it holds. Today the host name (a restart on
/// the same host is the same node and takes its claims back at once); the HA issue makes it a
/// setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(pub String);

impl NodeId {
    /// This host's name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`), or `localhost` when
    /// neither says: one host, one node.
    pub fn from_host() -> NodeId {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        NodeId(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's lease on one role of the cluster (`"jmafile"`, `"archive"`, `"retention"`): only its
/// holder polls that source or runs that job. Every commit the role makes carries `fencing`, and
/// the store refuses it once anyone else has taken the lease since (a paused or cut-off node
/// wakes up to find its token stale), so leadership never rests on a process's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub role: String,
    pub node: NodeId,
    /// Bumped every time the lease changes hands (or is taken again after running out).
    pub fencing: i64,
    /// When the lease runs out unless renewed (unix ms, the taker's clock).
    pub until_ms: i64,
}

/// A role's current lease holder, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderRow {
    pub role: String,
    pub node: String,
    pub fencing: i64,
    pub acquired_ms: i64,
    pub renewed_ms: i64,
    pub until_ms: i64,
}

/// A process registered as a node of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub node: String,
    /// Random per process: two processes claiming one node id are told apart by it.
    pub instance: String,
    pub started_ms: i64,
    pub seen_ms: i64,
    pub until_ms: i64,
    pub version: String,
    pub pid: i64,
    /// Items this node holds right now.
    pub claims: i64,
}

/// Why a node could not register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTaken {
    /// The live process holding the id.
    pub instance: String,
    pub pid: i64,
    pub seen_ms: i64,
    pub until_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        for s in ItemState::ALL {
            assert_eq!(ItemState::parse(s.as_str()), Some(s));
        }
        assert_eq!(Source::parse("nope"), None);
        assert_eq!(ItemState::parse("nope"), None);
        assert!(LEASE_RENEW * 3 <= LEASE);
    }
}
