//! JmaFile PuLL: `GET /v2/jmafile`, following `nextPooling` as the next `cursorToken`.
//!
//! One poller per planned stream ([`super::streams`]): each has its own `cursors` row, backlog
//! and schedule; all of them share one pacing of list calls ([`list_pacer`]) so that together
//! they stay below the provider's 2 list requests per second, however many there are.
//!
//! The poller is a small state machine kept in its `cursors` row, advanced one list call per
//! step, and each step commits its items together with the new cursor state in one
//! transaction:
//!
//! * **Head**: list with the stored `nextPooling` (or, with none, without a cursor: the very
//!   first start, over `jmafile.backfill`; or after a refused cursor, back to the watermark).
//!   Never sooner than `nextPoolingInterval` after the previous response, across restarts too.
//! * **Backlog**: when a head page carries `nextToken` and has not yet reached the watermark,
//!   the rest is paged back (one page per step, right away) until a page reaches it, whichever
//!   end of the backlog the server returned first. Only then does the head's `nextPooling`
//!   become the cursor and the watermark move up: a crash or an error mid-backlog resumes from
//!   the stored nextToken and never leaves a gap.
//! * The **watermark** says "every item up to this serial is recorded". Serials only decide
//!   where to stop paging: items themselves are never dropped for their serial (duplicates are
//!   ignored by id), so an odd or out-of-order serial upstream cannot hide an item.
//! * A full PuLL page without `nextToken` (undocumented) may hide older items: the next step
//!   lists without a cursor and pages back to the watermark.
//! * A **new stream** (a type added, groups changed) has no cursor: it starts from the newest
//!   item the mirror holds for its types (listing back to that serial, nothing from scratch)
//!   and backfills `jmafile.backfill` for types never seen.
//! * A **refused cursor**: any HTTP 400 to a request that carried a cursor, twice in a row (at
//!   once for the documented `cursorToken` message), drops it and re-baselines as above. A 400
//!   to a request without a cursor is not the cursor's fault (a bad `type`, say): an error
//!   naming `jmafile.types`, readiness failing, a long backoff, never a re-baseline loop.
//! * `datetime` never reaches back further than the month the API keeps ([`API_KEEPS`]).
//!
//! Driven by [`super::runner`]: it stops at waits and while a list call is in flight; a commit
//! that has started always finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use super::PollError;
use super::runner::{self, Backoff, Handled, Next};
use super::streams::{Filter, Stream};
use super::{FailureLog, Pacer};
use crate::api::models::{JmaFileItem, ListPage, raw_identity};
use crate::api::{ApiError, Client};
use crate::config::JmaFileSettings;
use crate::download::plan::plan_jmafile;
use crate::health::Health;
use crate::model::{Cursor, NewItem, Source, now_ms};
use crate::state::Store;
use crate::state::prelude::*;

/// The cursor of the stream without `type` (the only one before streams existed).
pub const CURSOR: &str = super::streams::ALL;
const ENDPOINT: &str = "/v2/jmafile";
/// Paging guard: a backlog longer than this many pages is abandoned (logged as an error). The
/// provider keeps a month of data; 1000 pages of 100 is far beyond a filtered subscription.
pub const MAX_PAGES: u32 = 1000;
/// Used when a response omits nextPoolingInterval (the documented example is 1600 ms).
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1600);
/// Never poll faster than this, whatever the server says (the provider asks clients to stay
/// well under 2 requests per second).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Re-baselining starts this far before the newest known item, because the timezone the API
/// applies to `datetime` values is undocumented (UTC or JST).
const BASELINE_SLACK: Duration = Duration::from_secs(86_400);
/// Wait after the key is refused later in the run (it may be fixed upstream).
const AUTH_BACKOFF: Duration = Duration::from_secs(300);
/// The API lists about a month of data; a `datetime` start further back is never sent (a
/// range outside the kept period has made the provider's lists misbehave).
pub const API_KEEPS: Duration = Duration::from_secs(30 * 86_400);
/// Backoff after a list call refused with 400 even without a cursor (a configuration
/// problem): first retry after this, doubling up to [`REFUSED_MAX`].
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);
const REFUSED_MAX: Duration = Duration::from_secs(900);

/// Shortest time between two jmafile list calls, across all streams.
pub const LIST_GAP: Duration = Duration::from_millis(600);

/// The pacing all PuLL streams share: one list call every [`LIST_GAP`] at most (1.67 per
/// second, never more than 2 in any second), first come first served, so together they stay
/// below the provider's "2 list requests per second" (§9) however many streams there are.
/// Each stream still waits its own `nextPoolingInterval` on top.
pub fn list_pacer() -> Pacer {
    Pacer::new(LIST_GAP)
}

/// Filters a cursor was made with; the API wants them resent with every cursorToken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Query {
    types: Vec<String>,
    /// `datetime` lower bound (UTC, `YYYY-MM-DDTHH:MM:SS`); items older than it are not
    /// wanted (the backfill horizon).
    since: Option<String>,
    /// Identifiers of the stream never seen in the mirror when it started (a type added to a
    /// group): their items are recorded only from `fresh_since` (the backfill window), while
    /// the stream lists further back for its other identifiers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fresh: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fresh_since: Option<String>,
}

/// The `type` values a stored cursor was made with (None: not a cursor of ours).
pub fn stored_types(cursor: &Cursor) -> Option<Vec<String>> {
    serde_json::from_str::<Query>(&cursor.query)
        .ok()
        .map(|q| q.types)
}

/// Outcome of one step.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub new: usize,
    pub refused: usize,
    /// This step fetched a backlog page (not a head poll).
    pub backlog: bool,
    /// A backlog is still being paged back: the next step should go right away.
    pub more: bool,
    /// nextPoolingInterval of this response: the earliest the next head poll may go out.
    pub interval: Duration,
    /// Items the server sent that this stream does not want (a lone identifier's
    /// over-matches), not recorded.
    pub dropped: usize,
}

/// A page's entries sorted by [`JmaFilePoller::sort_entries`].
struct Sorted {
    /// To record.
    entries: Vec<Entry>,
    /// An entry reached the horizon or the watermark: nothing older needs paging.
    reached: bool,
    /// The highest serial on the page within the horizon.
    page_high: Option<u64>,
    /// Entries the stream does not want.
    dropped: usize,
}

/// One entry of a page: parsed, or malformed with whatever identity it has.
enum Entry {
    Ok(JmaFileItem),
    Bad {
        id: Option<String>,
        serial: Option<u64>,
        raw: serde_json::Value,
        reason: String,
    },
}

impl Entry {
    /// Parses one entry. An entry without `receivedTime` or `format` (the oldest official
    /// types had neither) takes the response's `responseTime` and `headers[0].format`.
    fn parse(mut raw: serde_json::Value, response_time: Option<&str>) -> Entry {
        fill_in_optional_fields(&mut raw, response_time);
        match serde_json::from_value::<JmaFileItem>(raw.clone()) {
            Ok(item) => Entry::Ok(item),
            Err(e) => {
                let (id, serial) = raw_identity(&raw);
                Entry::Bad {
                    id,
                    serial,
                    raw,
                    reason: e.to_string(),
                }
            }
        }
    }
}

/// Supplies `receivedTime` (the response's time, else now) and `format` (`headers[0].format`)
/// when an entry lacks them, with a DEBUG line.
fn fill_in_optional_fields(raw: &mut serde_json::Value, response_time: Option<&str>) {
    let Some(obj) = raw.as_object_mut() else {
        return;
    };
    let id = obj
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    if obj.get("receivedTime").is_none_or(|v| v.is_null()) {
        let time = response_time.map(str::to_owned).unwrap_or_else(|| {
            OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        debug!(event = "field_filled", id = %id, field = "receivedTime", value = %time, "entry without receivedTime; using the response time");
        obj.insert("receivedTime".into(), serde_json::Value::String(time));
    }
    if obj.get("format").is_none_or(|v| v.is_null()) {
        let format = obj
            .get("headers")
            .and_then(|h| h.get(0))
            .and_then(|h| h.get("format"))
            .filter(|f| f.is_string())
            .cloned();
        if let Some(format) = format {
            debug!(event = "field_filled", id = %id, field = "format", value = %format, "entry without format; using headers[0].format");
            obj.insert("format".into(), format);
        }
    }
}

pub struct JmaFilePoller {
    client: Arc<Client>,
    store: Store,
    settings: JmaFileSettings,
    stream: Stream,
    /// Shared by every stream (see [`list_pacer`]).
    pacer: Arc<Pacer>,
    max_size: u64,
    /// `storage.retention`: nothing older is listed again (it may have been removed on purpose).
    retention: Option<Duration>,
    wake: Arc<Notify>,
    /// Pages of the current backlog fetched by this process (the paging guard).
    backlog_pages: AtomicU32,
    health: Arc<Health>,
    /// The role lease every commit is fenced with (None: unfenced, tests of the poller alone).
    lease: Option<Arc<crate::cluster::RoleLease>>,
    /// The API has answered this process (a refused key is fatal only before that).
    contacted: bool,
    /// HTTP 400s in a row to requests that carried a cursor.
    cursor_refusals: u32,
}

fn utc_stamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn ms_to_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn time_to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

impl JmaFilePoller {
    #[allow(clippy::too_many_arguments)] // the parts it shares with the other tasks
    pub fn new(
        client: Arc<Client>,
        store: Store,
        settings: JmaFileSettings,
        stream: Stream,
        pacer: Arc<Pacer>,
        max_size: u64,
        retention: Option<Duration>,
        wake: Arc<Notify>,
        health: Arc<Health>,
    ) -> Self {
        JmaFilePoller {
            client,
            store,
            settings,
            stream,
            pacer,
            max_size,
            retention,
            wake,
            backlog_pages: AtomicU32::new(0),
            health,
            lease: None,
            contacted: false,
            cursor_refusals: 0,
        }
    }

    /// Fences every commit with this node's lease on the role: once another node has taken
    /// it, nothing this poller listed is committed.
    pub fn with_lease(mut self, lease: Arc<crate::cluster::RoleLease>) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Nothing before this is listed: the retention horizon and the month the API keeps.
    fn floor(&self, now: OffsetDateTime) -> OffsetDateTime {
        let keeps = now - API_KEEPS;
        match self.retention {
            Some(r) => keeps.max(now - r),
            None => keeps,
        }
    }

    /// A stream without a cursor of its own (new, or regrouped): it starts from the newest item
    /// the mirror holds for each of its types, listing back to that serial (nothing from
    /// scratch, no gap), and backfills `jmafile.backfill` for types never seen.
    async fn start(&self, now: OffsetDateTime) -> Result<(Cursor, Query), PollError> {
        let newest = self.store.newest_listed(&self.stream.matches()).await?;
        let backfill_from = now - self.settings.backfill;
        let seen: Vec<(u64, i64)> = newest.iter().flatten().copied().collect();
        let oldest_seen = seen.iter().map(|(_, ms)| *ms).min();
        let all_seen =
            !seen.is_empty() && seen.len() == newest.len() && self.stream.filter != Filter::All;
        let mut cursor = Cursor::default();
        let mut query = Query {
            types: self.stream.types(),
            ..Query::default()
        };
        let since = if all_seen {
            cursor.high_serial = seen.iter().map(|(s, _)| *s).min();
            cursor.last_received_ms = oldest_seen;
            ms_to_time(oldest_seen.unwrap_or(0)) - BASELINE_SLACK
        } else {
            if let Filter::Exact(ids) = &self.stream.filter {
                query.fresh = ids
                    .iter()
                    .zip(&newest)
                    .filter(|(_, n)| n.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                if !seen.is_empty() {
                    query.fresh_since = Some(utc_stamp(backfill_from));
                }
            }
            oldest_seen.map_or(backfill_from, |ms| {
                backfill_from.min(ms_to_time(ms) - BASELINE_SLACK)
            })
        };
        let since = since.max(self.floor(now));
        query.since = Some(utc_stamp(since));
        info!(
            event = "stream_start",
            stream = %self.stream.name,
            types = ?query.types,
            from_serial = cursor.high_serial,
            since = %utc_stamp(since),
            backfill = ?query.fresh,
            "{}",
            if all_seen {
                "new stream: listing back to the newest item the mirror holds for its types"
            } else {
                "new stream: backfilling the types never seen before"
            }
        );
        Ok((cursor, query))
    }

    /// One step: one list call, then its items and the new cursor state in one transaction.
    /// The network half is safe to cancel (nothing is written before the response is in).
    #[tracing::instrument(name = "poll", skip_all, fields(source = "jmafile", stream = %self.stream.name))]
    pub async fn poll_once(&self) -> Result<PollReport, PollError> {
        let name = self.stream.name.as_str();
        let now = OffsetDateTime::now_utc();
        let floor = self.floor(now);
        let (cursor, mut query) = match self.store.cursor(name).await? {
            // Ours once a step has committed it (a row made by an error alone is not).
            Some(c)
                if c.last_poll_ms.is_some()
                    && stored_types(&c).as_deref() == Some(&self.stream.types()[..]) =>
            {
                let q: Query = serde_json::from_str(&c.query).unwrap_or_default();
                (c, q)
            }
            previous => {
                let (mut c, q) = self.start(now).await?;
                // The schedule survives a restart even when the position does not.
                if let Some(p) = previous {
                    c.interval_ms = p.interval_ms;
                    c.last_poll_ms = p.last_poll_ms;
                }
                (c, q)
            }
        };

        let backlog = cursor.backlog_token.clone();
        let head_token = cursor.token.clone();
        if backlog.is_none() && head_token.is_none() {
            // A baseline: a new stream (see `start`), or a refused cursor (back to the newest
            // known item).
            let horizon = match (cursor.high_serial, cursor.last_received_ms) {
                (Some(_), Some(ms)) => ms_to_time(ms) - BASELINE_SLACK,
                _ => query
                    .since
                    .as_deref()
                    .and_then(|s| crate::api::models::parse_time(s).ok())
                    .unwrap_or(now - self.settings.backfill),
            };
            query.types = self.stream.types();
            query.since = Some(utc_stamp(horizon.max(floor)));
        }
        // Never further back than the API keeps or retention allows, even for a cursor made
        // long ago (the filters are resent with every cursorToken).
        let horizon = query
            .since
            .as_deref()
            .and_then(|s| crate::api::models::parse_time(s).ok())
            .map_or(floor, |h| h.max(floor));

        let mut params: Vec<(&str, String)> = vec![("limit", self.settings.limit.to_string())];
        if !query.types.is_empty() {
            params.push(("type", query.types.join(",")));
        }
        params.push(("datetime", format!("{}~", utc_stamp(horizon))));
        let sent_cursor = backlog.as_ref().or(head_token.as_ref());
        if let Some(t) = sent_cursor {
            params.push(("cursorToken", t.clone()));
        }
        let with_cursor = sent_cursor.is_some();
        let paced = self.pacer.wait();
        let page: ListPage = match self.client.list_after(ENDPOINT, &params, paced).await {
            Ok(page) => page,
            Err(e) if is_bad_request(&e) => {
                return Err(PollError::Refused {
                    with_cursor,
                    source: e,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.record_page(
            page,
            cursor,
            query,
            backlog.is_some(),
            head_token.is_some(),
            horizon,
        )
        .await
    }

    /// The database half of a step; not cancelled once started.
    async fn record_page(
        &self,
        page: ListPage,
        mut cursor: Cursor,
        query: Query,
        is_backlog: bool,
        is_pull: bool,
        horizon: OffsetDateTime,
    ) -> Result<PollReport, PollError> {
        let interval = page
            .next_pooling_interval
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(MIN_INTERVAL, Duration::from_secs(3600));
        let watermark = cursor.high_serial;
        let full = page.items.len() >= self.settings.limit as usize;
        let sorted = self.sort_entries(
            page.items,
            page.response_time.as_deref(),
            &mut cursor,
            &query,
            horizon,
        );
        let paging_on = page.next_token.is_some() && !sorted.reached;
        let more = if is_backlog {
            self.advance_backlog(&mut cursor, page.next_token, paging_on, watermark)
        } else {
            let pooling = page.next_pooling.ok_or_else(|| ApiError::Malformed {
                endpoint: ENDPOINT.into(),
                detail: "nextPooling is missing".into(),
            })?;
            let head_high = max_opt(sorted.page_high, watermark);
            if paging_on {
                // More behind this page: page back before adopting the new position.
                cursor.backlog_token = page.next_token;
                cursor.backlog_pooling = Some(pooling);
                cursor.backlog_high = head_high;
                self.backlog_pages.store(0, Ordering::Relaxed);
                true
            } else if is_pull && full && page.next_token.is_none() && !sorted.reached {
                warn!(
                    event = "full_page",
                    stream = %self.stream.name,
                    items = sorted.entries.len(),
                    "a full PuLL page came without nextToken; listing again without a cursor, back to the last known serial, so nothing is skipped"
                );
                cursor.token = None;
                false
            } else {
                cursor.token = Some(pooling);
                cursor.high_serial = head_high;
                false
            }
        };
        cursor.query = serde_json::to_string(&query).unwrap_or_else(|_| "{}".into());
        cursor.interval_ms = Some(interval.as_millis() as i64);
        let (new, refused) = self.commit(cursor, sorted.entries).await?;
        Ok(PollReport {
            new,
            refused,
            backlog: is_backlog,
            more,
            interval,
            dropped: sorted.dropped,
        })
    }

    /// Parses a page's entries and keeps those to record; notes how far the page reaches
    /// (the horizon, the watermark) and the newest receivedTime seen in `cursor`.
    fn sort_entries(
        &self,
        raw_items: Vec<serde_json::Value>,
        response_time: Option<&str>,
        cursor: &mut Cursor,
        query: &Query,
        horizon: OffsetDateTime,
    ) -> Sorted {
        let watermark = cursor.high_serial;
        let fresh_since = query
            .fresh_since
            .as_deref()
            .and_then(|s| crate::api::models::parse_time(s).ok());
        let mut sorted = Sorted {
            entries: Vec::with_capacity(raw_items.len()),
            reached: false,
            page_high: None,
            dropped: 0,
        };
        for raw in raw_items {
            let entry = Entry::parse(raw, response_time);
            if let Entry::Ok(item) = &entry {
                let ms = time_to_ms(item.received_time);
                cursor.last_received_ms = Some(cursor.last_received_ms.map_or(ms, |l| l.max(ms)));
                if item.received_time < horizon {
                    sorted.reached = true;
                    continue;
                }
                // Serials only tell where to stop; the item is kept (a known id is ignored on
                // insert), so an out-of-order serial cannot hide a new item.
                if watermark.is_some_and(|w| item.serial <= w) {
                    sorted.reached = true;
                }
                sorted.page_high =
                    Some(sorted.page_high.map_or(item.serial, |h| h.max(item.serial)));
                let identifier = item.identifier();
                let before_backfill = fresh_since.is_some_and(|f| item.received_time < f)
                    && identifier.as_ref().is_some_and(|i| query.fresh.contains(i));
                if !self.stream.keeps(identifier.as_deref()) || before_backfill {
                    sorted.dropped += 1;
                    continue;
                }
            }
            sorted.entries.push(entry);
        }
        if sorted.dropped > 0 {
            debug!(
                event = "items_dropped",
                stream = %self.stream.name,
                dropped = sorted.dropped,
                "items the stream does not want (a lone identifier is a prefix match upstream, or older than the backfill of a new type)"
            );
        }
        sorted
    }

    /// After a backlog page: page on (true), or, at the watermark or the paging guard, adopt
    /// the head's position and watermark the backlog was started for.
    fn advance_backlog(
        &self,
        cursor: &mut Cursor,
        next_token: Option<String>,
        paging_on: bool,
        watermark: Option<u64>,
    ) -> bool {
        let pages = self.backlog_pages.fetch_add(1, Ordering::Relaxed) + 1;
        if paging_on && pages < MAX_PAGES {
            cursor.backlog_token = next_token;
            return true;
        }
        if paging_on {
            error!(
                event = "paging_capped",
                stream = %self.stream.name,
                pages,
                "stopped paging back after {pages} pages; older items of this backlog may be missing \
                 (narrow jmafile.types?)"
            );
        }
        cursor.token = cursor.backlog_pooling.take();
        cursor.high_serial = max_opt(cursor.backlog_high.take(), watermark);
        cursor.backlog_token = None;
        self.backlog_pages.store(0, Ordering::Relaxed);
        false
    }

    /// The page's items and the new cursor state in one transaction; returns (new, refused).
    async fn commit(
        &self,
        mut cursor: Cursor,
        entries: Vec<Entry>,
    ) -> Result<(usize, usize), PollError> {
        let items = self.new_items(entries);
        let now = now_ms();
        cursor.last_poll_ms = Some(now);
        let fence = self.lease.as_ref().map(|l| l.fence()).transpose()?;
        let committed = self
            .store
            .commit_poll(&self.stream.name, &cursor, &items, now, fence.as_ref())
            .await?;
        for (item, new) in items.iter().zip(&committed.new) {
            if let (true, Some(reason)) = (*new, &item.refused) {
                error!(
                    event = "item_refused",
                    source = "jmafile",
                    id = %item.id,
                    serial = item.serial,
                    classification = %item.classification,
                    error = %reason,
                    "item refused without fetching; it stays failed (see `jma-poller status`)"
                );
            }
        }
        if committed.inserted > 0 {
            self.wake.notify_waiters();
        }
        Ok((committed.inserted, committed.refused))
    }

    /// The page's entries as rows to record, oldest first (so arrival order and insertion
    /// order agree); an entry without an id cannot be recorded and is logged instead.
    fn new_items(&self, entries: Vec<Entry>) -> Vec<NewItem> {
        let trusted = self.client.trusted();
        let mut items = Vec::with_capacity(entries.len());
        for entry in entries.into_iter().rev() {
            match entry {
                Entry::Ok(item) => {
                    let received_ms = Some(time_to_ms(item.received_time));
                    let type_name = item.identifier();
                    let (plan, path, refused) = match plan_jmafile(&item, trusted, self.max_size) {
                        Ok(p) => (Some(p.plan), Some(p.rel_path), None),
                        Err(e) => (None, None, Some(e.to_string())),
                    };
                    items.push(NewItem {
                        source: Source::Jmafile,
                        id: item.id,
                        serial: Some(item.serial),
                        classification: item.classification,
                        received_ms,
                        url: item.url,
                        plan,
                        path,
                        refused,
                        type_name,
                    });
                }
                Entry::Bad {
                    id: Some(id),
                    serial,
                    raw,
                    reason,
                } => items.push(super::malformed_entry(
                    Source::Jmafile,
                    id,
                    serial,
                    &raw,
                    &reason,
                )),
                Entry::Bad {
                    id: None,
                    raw,
                    reason,
                    ..
                } => {
                    let text = raw.to_string();
                    error!(
                        event = "entry_skipped",
                        error = %reason,
                        entry = %text.chars().take(300).collect::<String>(),
                        "a list entry has no id, so it cannot be recorded or fetched; report it upstream if it repeats"
                    );
                }
            }
        }
        items
    }

    /// The first step after a start waits a full stored interval.
    async fn first_wait(&self) -> Duration {
        match self.store.cursor(&self.stream.name).await {
            Ok(Some(Cursor {
                interval_ms: Some(interval),
                ..
            })) => {
                // A full interval from now, not from the last recorded response: the previous
                // process may have had a list call in flight when it stopped (a shutdown
                // abandons it, `kill -9` too), whose response the server sent but nobody
                // recorded. That response came before this start, so one interval from now
                // is never too soon, whatever happened; it costs one interval per restart.
                Duration::from_millis(interval.max(0) as u64)
                    .clamp(MIN_INTERVAL, Duration::from_secs(3600))
            }
            Ok(_) => Duration::ZERO,
            Err(e) => {
                warn!(event = "poll_failed", stream = %self.stream.name, error = %e, "cannot read the cursor; will retry");
                Duration::ZERO
            }
        }
    }

    /// Logs a successful step (the runner counts it).
    fn report(&self, report: &PollReport, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        if report.new > 0 || report.refused > 0 {
            info!(
                event = "poll",
                stream = %self.stream.name,
                new = report.new,
                refused = report.refused,
                backlog = report.backlog,
                ms,
                "listed {} new item(s)",
                report.new + report.refused
            );
        } else {
            debug!(
                event = "poll",
                stream = %self.stream.name,
                new = 0,
                backlog = report.backlog,
                ms,
                "no new items"
            );
        }
    }

    /// An HTTP 400 to a request that carried a cursor, `self.cursor_refusals` in a row.
    async fn refused_with_cursor(&mut self, error: &ApiError) -> Duration {
        self.contacted = true;
        self.cursor_refusals += 1;
        self.cursor_refused(error, self.cursor_refusals).await;
        if self.cursor_refusals >= 2 || matches!(error, ApiError::InvalidCursor { .. }) {
            self.cursor_refusals = 0;
        }
        self.interval_hint().await
    }

    /// The key refused after this process has been answered before (it may be fixed
    /// upstream): one ERROR line per change, retried every [`AUTH_BACKOFF`] or so.
    async fn auth_refused(&self, e: &ApiError, failures: &mut FailureLog) -> Duration {
        if failures.failed("auth") {
            error!(
                event = "auth_refused",
                stream = %self.stream.name,
                error = %e,
                "the API key was refused; check api.key / api.key_file and the key's permissions in the dmdata.jp console. Retrying every {}s",
                AUTH_BACKOFF.as_secs()
            );
        }
        self.record_error(&e.to_string()).await;
        crate::backoff::delay(2, AUTH_BACKOFF, AUTH_BACKOFF * 2)
    }

    /// Keeps the error in the stream's cursor row (for `status`).
    async fn record_error(&self, error: &str) {
        let _ = self
            .store
            .record_stream_error(&self.stream.name, &self.query_json(), error, now_ms())
            .await;
    }

    /// A 400 to a request that carried a cursor: the documented `cursorToken` message drops
    /// the cursor at once; any other message on the second time in a row (one WARN line
    /// either way). The next step lists without it, back to the newest known item.
    async fn cursor_refused(&self, error: &ApiError, in_a_row: u32) {
        let documented = matches!(error, ApiError::InvalidCursor { .. });
        if !documented && in_a_row < 2 {
            debug!(
                event = "cursor_refused_once",
                stream = %self.stream.name,
                error = %error,
                "HTTP 400 to a request with a cursor; trying the same cursor once more before dropping it"
            );
            return;
        }
        warn!(
            event = "cursor_refused",
            stream = %self.stream.name,
            error = %error,
            "the API refused the stored cursor (expired?); listing again from the newest known item, without gaps"
        );
        if let Err(e) = self.store.clear_cursor_token(&self.stream.name).await {
            error!(event = "poll_failed", stream = %self.stream.name, error = %e, "cannot clear the cursor");
        }
    }

    /// A 400 to a request without a cursor: the request itself is refused, most likely a
    /// `type` value. Retrying soon would not help, re-baselining neither: an ERROR line naming
    /// the setting, readiness failing with it, and a long backoff.
    async fn types_refused(&self, error: &ApiError, failures: &mut FailureLog) -> Duration {
        let n = failures.consecutive + 1;
        let wait = crate::backoff::delay(n, REFUSED_BACKOFF, REFUSED_MAX);
        let types = self.stream.types();
        let reason = format!(
            "jmafile.types: the API refuses the list call of stream {} (type={}) even without a cursor: {error}",
            self.stream.name,
            if types.is_empty() {
                "none".to_owned()
            } else {
                types.join(",")
            }
        );
        if failures.failed("refused") {
            error!(
                event = "types_refused",
                stream = %self.stream.name,
                types = ?types,
                error = %error,
                retry_in_ms = wait.as_millis() as u64,
                "jmafile.types: the API refuses this stream's list call (HTTP 400) even without a cursor, so the request itself is wrong, most likely a `type` value; check jmafile.types against the data identifiers of your contract. Retrying with backoff"
            );
        }
        self.health.stream_refused(&self.stream.name, &reason);
        self.record_error(&reason).await;
        wait
    }

    /// HTTP 402 `No contract.`: the account's contract does not cover this stream. One ERROR
    /// line (and a reminder now and then), readiness failing with the reason, and the stream
    /// asked again every [`super::NO_CONTRACT_RETRY`] while the other sources go on. When every
    /// source is refused at start, the application stops with exit code 3 instead.
    async fn no_contract(&self, error: &ApiError, failures: &mut FailureLog) -> Duration {
        let wait = super::NO_CONTRACT_RETRY;
        let message = match error {
            ApiError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        };
        if failures.failed("contract") {
            error!(
                event = "no_contract",
                stream = %self.stream.name,
                types = ?self.stream.types(),
                error = %error,
                retry_in_s = wait.as_secs(),
                "the account's contract does not cover jmafile stream {} (HTTP 402 {message:?}): add the JMA file-format data contract in the dmdata.jp console, or set jmafile.enabled = false. Asking again every {} minutes; the other sources go on",
                self.stream.name,
                wait.as_secs() / 60
            );
        }
        self.health.contract_refused(&self.stream.name, &message);
        self.health.stream_refused(
            &self.stream.name,
            &format!("stream {}: no contract ({message})", self.stream.name),
        );
        self.record_error(&error.to_string()).await;
        wait
    }

    /// Any other failure: the runner backs off (never sooner than the stream's interval),
    /// honouring Retry-After, logged once per change.
    async fn plain_failure(&self, e: &PollError) -> Backoff {
        let (kind, transient, retry_after) = match e {
            PollError::Api(a) if a.is_certificate() => ("tls", false, None),
            PollError::Api(a) => ("api", a.is_transient(), a.retry_after()),
            PollError::Store(_) => ("store", true, None),
            PollError::Refused { source, .. } => ("api", false, source.retry_after()),
        };
        let floor = self.interval_hint().await;
        self.record_error(&e.to_string()).await;
        Backoff {
            kind,
            base: if transient {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(30)
            },
            cap: Duration::from_secs(300),
            floor,
            retry_after,
            hint: "",
        }
    }

    /// The stream's filters, for a cursor row made by an error.
    fn query_json(&self) -> String {
        serde_json::to_string(&Query {
            types: self.stream.types(),
            ..Query::default()
        })
        .unwrap_or_else(|_| "{}".into())
    }

    async fn interval_hint(&self) -> Duration {
        match self.store.cursor(&self.stream.name).await {
            Ok(Some(Cursor {
                interval_ms: Some(ms),
                ..
            })) if ms > 0 => Duration::from_millis(ms as u64),
            _ => DEFAULT_INTERVAL,
        }
    }
}

/// A stream in the [`runner`]: the runner schedules and counts; the stream knows what its
/// refusals mean (a refused cursor, refused types, no contract, a refused key).
impl runner::Source for JmaFilePoller {
    fn source(&self) -> &'static str {
        "jmafile"
    }

    fn unit(&self) -> &str {
        &self.stream.name
    }

    /// The watchdog is fed while every stream keeps its schedule (see `health`).
    fn watchdog_grace(&self) -> Option<Duration> {
        Some(self.client.list_timeout() + Duration::from_secs(60))
    }

    async fn first_wait(&mut self) -> Duration {
        JmaFilePoller::first_wait(self).await
    }

    async fn step(&mut self) -> Result<Next, PollError> {
        let started = Instant::now();
        let report = self.poll_once().await?;
        self.contacted = true;
        self.cursor_refusals = 0;
        // Any answer but 402 says the contract covers this stream.
        self.health.contract_covered(&self.stream.name);
        self.health.stream_succeeded(&self.stream.name);
        self.report(&report, started);
        let items = (report.new + report.refused) as u64;
        // Paging back a backlog: the next page goes out at once (the shared pacing and the
        // api budget space it); the interval applies to head polls.
        let wait = if report.more {
            Duration::ZERO
        } else {
            report.interval
        };
        Ok(Next::Listed { items, wait })
    }

    async fn failed(&mut self, error: PollError, failures: &mut FailureLog) -> Handled {
        if matches!(error, PollError::Refused { .. }) {
            self.health.contract_covered(&self.stream.name);
        } else {
            self.cursor_refusals = 0;
        }
        let wait = match error {
            PollError::Refused {
                with_cursor: true,
                source,
            } => self.refused_with_cursor(&source).await,
            PollError::Refused {
                with_cursor: false,
                source,
            } => {
                self.contacted = true;
                self.types_refused(&source, failures).await
            }
            PollError::Api(e) if e.is_no_contract() => self.no_contract(&e, failures).await,
            PollError::Api(e) if e.is_auth() && !self.contacted => return Handled::Fatal(e),
            PollError::Api(e) if e.is_auth() => self.auth_refused(&e, failures).await,
            e => return Handled::Backoff(self.plain_failure(&e).await),
        };
        Handled::Wait(wait)
    }
}

/// HTTP 400 (the documented cursor message or any other).
fn is_bad_request(e: &ApiError) -> bool {
    matches!(e, ApiError::InvalidCursor { .. }) || e.status() == Some(400)
}
