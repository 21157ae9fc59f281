//! JmaFile PuLL: `GET /v2/jmafile`, following `nextPooling` as the next `cursorToken`.
//!
//! The poller is a small state machine kept in the `cursors` row, advanced one list call per
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
//!
//! Cancellation: the loop stops at waits and while a list call is in flight; a commit that has
//! started always finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::FailureLog;
use crate::api::models::{JmaFileItem, ListPage, raw_identity};
use crate::api::{ApiError, Client};
use crate::config::JmaFileSettings;
use crate::download::plan::plan_jmafile;
use crate::health::Health;
use crate::state::{Cursor, NewItem, Source, Store, StoreError, now_ms};

pub const CURSOR: &str = "jmafile";
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

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Filters a cursor was made with; the API wants them resent with every cursorToken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Query {
    types: Vec<String>,
    /// `datetime` lower bound (UTC, `YYYY-MM-DDTHH:MM:SS`); items older than it are not
    /// wanted (the backfill horizon).
    since: Option<String>,
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
    fn parse(raw: serde_json::Value) -> Entry {
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

pub struct JmaFilePoller {
    client: Arc<Client>,
    store: Store,
    settings: JmaFileSettings,
    max_size: u64,
    /// `storage.retention`: nothing older is listed again (it may have been removed on purpose).
    retention: Option<Duration>,
    wake: Arc<Notify>,
    /// Pages of the current backlog fetched by this process (the paging guard).
    backlog_pages: AtomicU32,
    health: Arc<Health>,
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
    pub fn new(
        client: Arc<Client>,
        store: Store,
        settings: JmaFileSettings,
        max_size: u64,
        retention: Option<Duration>,
        wake: Arc<Notify>,
        health: Arc<Health>,
    ) -> Self {
        JmaFilePoller {
            client,
            store,
            settings,
            max_size,
            retention,
            wake,
            backlog_pages: AtomicU32::new(0),
            health,
        }
    }

    /// One step: one list call, then its items and the new cursor state in one transaction.
    /// The network half is safe to cancel (nothing is written before the response is in).
    pub async fn poll_once(&self) -> Result<PollReport, PollError> {
        let stored = self.store.cursor(CURSOR).await?.unwrap_or_default();
        let mut cursor = stored.clone();
        let mut query: Query = serde_json::from_str(&cursor.query).unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        let floor = self.retention.map(|r| now - r);

        let following = cursor.token.is_some() || cursor.backlog_token.is_some();
        if following && query.types != self.settings.types {
            // New filters: list them afresh over the backfill window, and at least back to the
            // newest item we had, so nothing that arrived meanwhile is skipped.
            let mut horizon = now - self.settings.backfill;
            if let Some(ms) = cursor.last_received_ms {
                horizon = horizon.min(ms_to_time(ms) - BASELINE_SLACK);
            }
            info!(
                event = "types_changed",
                from = ?query.types,
                to = ?self.settings.types,
                "jmafile.types changed; listing the new set from {}",
                utc_stamp(horizon)
            );
            cursor = Cursor {
                last_received_ms: cursor.last_received_ms,
                ..Cursor::default()
            };
            query = Query {
                types: self.settings.types.clone(),
                since: Some(utc_stamp(horizon)),
            };
        }

        let backlog = cursor.backlog_token.clone();
        let head_token = cursor.token.clone();
        if backlog.is_none() && head_token.is_none() {
            // A baseline: the first start, or a refused cursor (back to the newest known item).
            let horizon = match (cursor.high_serial, cursor.last_received_ms) {
                (Some(_), Some(ms)) => ms_to_time(ms) - BASELINE_SLACK,
                _ => match &query.since {
                    Some(since) if query.types == self.settings.types => {
                        crate::api::models::parse_time(since)
                            .unwrap_or(now - self.settings.backfill)
                    }
                    _ => now - self.settings.backfill,
                },
            };
            let horizon = floor.map_or(horizon, |f| horizon.max(f));
            query = Query {
                types: self.settings.types.clone(),
                since: Some(utc_stamp(horizon)),
            };
        }
        let horizon = query
            .since
            .as_deref()
            .and_then(|s| crate::api::models::parse_time(s).ok());
        let horizon = match (horizon, floor) {
            (Some(h), Some(f)) => Some(h.max(f)),
            (h, f) => h.or(f),
        };

        let mut params: Vec<(&str, String)> = vec![("limit", self.settings.limit.to_string())];
        if !query.types.is_empty() {
            params.push(("type", query.types.join(",")));
        }
        if let Some(since) = &query.since {
            params.push(("datetime", format!("{since}~")));
        }
        if let Some(t) = backlog.as_ref().or(head_token.as_ref()) {
            params.push(("cursorToken", t.clone()));
        }
        let page: ListPage = self.client.list(ENDPOINT, &params).await?;
        self.step(
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
    async fn step(
        &self,
        page: ListPage,
        mut cursor: Cursor,
        query: Query,
        is_backlog: bool,
        is_pull: bool,
        horizon: Option<OffsetDateTime>,
    ) -> Result<PollReport, PollError> {
        let interval = page
            .next_pooling_interval
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(MIN_INTERVAL, Duration::from_secs(3600));
        let watermark = cursor.high_serial;
        let full = page.items.len() >= self.settings.limit as usize;
        let mut reached = false;
        let mut page_high: Option<u64> = None;
        let mut entries = Vec::with_capacity(page.items.len());
        for raw in page.items {
            let entry = Entry::parse(raw);
            if let Entry::Ok(item) = &entry {
                let ms = time_to_ms(item.received_time);
                cursor.last_received_ms = Some(cursor.last_received_ms.map_or(ms, |l| l.max(ms)));
                if horizon.is_some_and(|h| item.received_time < h) {
                    reached = true;
                    continue;
                }
                // Serials only tell where to stop; the item is kept (a known id is ignored on
                // insert), so an out-of-order serial cannot hide a new item.
                if watermark.is_some_and(|w| item.serial <= w) {
                    reached = true;
                }
                page_high = Some(page_high.map_or(item.serial, |h| h.max(item.serial)));
            }
            entries.push(entry);
        }
        let paging_on = page.next_token.is_some() && !reached;
        let mut more = false;
        if is_backlog {
            let pages = self.backlog_pages.fetch_add(1, Ordering::Relaxed) + 1;
            if paging_on && pages < MAX_PAGES {
                cursor.backlog_token = page.next_token;
                more = true;
            } else {
                if paging_on {
                    error!(
                        event = "paging_capped",
                        pages,
                        "stopped paging back after {pages} pages; older items of this backlog may be missing \
                         (narrow jmafile.types?)"
                    );
                }
                cursor.token = cursor.backlog_pooling.take();
                cursor.high_serial = max_opt(cursor.backlog_high.take(), watermark);
                cursor.backlog_token = None;
                self.backlog_pages.store(0, Ordering::Relaxed);
            }
        } else {
            let pooling = page.next_pooling.ok_or_else(|| ApiError::Malformed {
                endpoint: ENDPOINT.into(),
                detail: "nextPooling is missing".into(),
            })?;
            let head_high = max_opt(page_high, watermark);
            if paging_on {
                // More behind this page: page back before adopting the new position.
                cursor.backlog_token = page.next_token;
                cursor.backlog_pooling = Some(pooling);
                cursor.backlog_high = head_high;
                self.backlog_pages.store(0, Ordering::Relaxed);
                more = true;
            } else if is_pull && full && page.next_token.is_none() && !reached {
                warn!(
                    event = "full_page",
                    items = entries.len(),
                    "a full PuLL page came without nextToken; listing again without a cursor, back to the last known serial, so nothing is skipped"
                );
                cursor.token = None;
            } else {
                cursor.token = Some(pooling);
                cursor.high_serial = head_high;
            }
        }

        let trusted = self.client.trusted();
        let mut items = Vec::with_capacity(entries.len());
        // Oldest first, so arrival order and insertion order agree.
        for entry in entries.into_iter().rev() {
            match entry {
                Entry::Ok(item) => {
                    let received_ms = Some(time_to_ms(item.received_time));
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
        let now = now_ms();
        cursor.query = serde_json::to_string(&query).unwrap_or_else(|_| "{}".into());
        cursor.interval_ms = Some(interval.as_millis() as i64);
        cursor.last_poll_ms = Some(now);
        let committed = self.store.commit_poll(CURSOR, &cursor, &items, now).await?;
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
        Ok(PollReport {
            new: committed.inserted,
            refused: committed.refused,
            backlog: is_backlog,
            more,
            interval,
        })
    }

    /// Polls until `cancel`. Returns an error only when the key is refused on the very first
    /// request of the process (a misconfiguration that retrying cannot fix).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ApiError> {
        let mut next_at = Instant::now();
        match self.store.cursor(CURSOR).await {
            Ok(Some(Cursor {
                last_poll_ms: Some(last),
                interval_ms: Some(interval),
                ..
            })) => {
                // Clamped: if the wall clock went back, the stored time is in the future and
                // must not stall the first poll.
                let wait_ms = (last + interval - now_ms()).min(interval);
                if wait_ms > 0 {
                    next_at += Duration::from_millis(wait_ms as u64);
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(event = "poll_failed", error = %e, "cannot read the cursor; will retry")
            }
        }
        let mut failures = FailureLog::default();
        let mut contacted = false;
        // The watchdog is fed while the loop keeps these promises (see `health`).
        let grace = self.client.list_timeout() + Duration::from_secs(60);
        loop {
            self.health
                .promise(next_at.saturating_duration_since(Instant::now()) + grace);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_at) => {}
            }
            self.health.promise(grace);
            let started = Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.poll_once() => r,
            };
            match &result {
                Ok(report) => {
                    self.health.poll_succeeded("jmafile");
                    metrics::counter!("jma_poller_polls_total", "source" => "jmafile", "result" => "ok").increment(1);
                    metrics::counter!("jma_poller_items_listed_total", "source" => "jmafile")
                        .increment((report.new + report.refused) as u64);
                }
                Err(e) => {
                    self.health.poll_failed(&e.to_string());
                    metrics::counter!("jma_poller_polls_total", "source" => "jmafile", "result" => "error").increment(1);
                }
            }
            let wait = match result {
                Ok(report) => {
                    contacted = true;
                    let recovered = failures.recovered();
                    if recovered > 0 {
                        info!(
                            event = "poll_recovered",
                            failures = recovered,
                            "polling works again after {recovered} failed attempt(s)"
                        );
                    }
                    let ms = started.elapsed().as_millis() as u64;
                    if report.new > 0 || report.refused > 0 {
                        info!(
                            event = "poll",
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
                            new = 0,
                            backlog = report.backlog,
                            ms,
                            "no new items"
                        );
                    }
                    if report.more {
                        // Paging back a backlog: the next page goes out at once (the api
                        // budget paces it); the interval applies to head polls.
                        next_at = Instant::now();
                        continue;
                    }
                    report.interval
                }
                Err(PollError::Api(ApiError::InvalidCursor { message, .. })) => {
                    warn!(
                        event = "cursor_refused",
                        error = %message,
                        "the API refused the stored cursor (expired?); listing again from the newest known item, without gaps"
                    );
                    if let Err(e) = self.store.clear_cursor_token(CURSOR).await {
                        error!(event = "poll_failed", error = %e, "cannot clear the cursor");
                    }
                    self.interval_hint().await
                }
                Err(PollError::Api(e)) if e.is_auth() => {
                    if !contacted {
                        return Err(e);
                    }
                    if failures.failed("auth") {
                        error!(
                            event = "auth_refused",
                            error = %e,
                            "the API key was refused; check api.key / api.key_file and the key's permissions in the dmdata.jp console. Retrying every {}s",
                            AUTH_BACKOFF.as_secs()
                        );
                    }
                    let _ = self
                        .store
                        .record_poll_error(CURSOR, &e.to_string(), now_ms())
                        .await;
                    crate::backoff::delay(2, AUTH_BACKOFF, AUTH_BACKOFF * 2)
                }
                Err(e) => {
                    let (kind, transient, retry_after) = match &e {
                        PollError::Api(a) if a.is_certificate() => ("tls", false, None),
                        PollError::Api(a) => ("api", a.is_transient(), a.retry_after()),
                        PollError::Store(_) => ("store", true, None),
                    };
                    let floor = self.interval_hint().await;
                    let n = failures.consecutive + 1;
                    let base = if transient {
                        Duration::from_secs(2)
                    } else {
                        Duration::from_secs(30)
                    };
                    let wait = crate::backoff::honour_retry_after(
                        crate::backoff::delay(n, base, Duration::from_secs(300)).max(floor),
                        retry_after,
                        Duration::from_secs(3600),
                    );
                    let logged = failures.failed(kind);
                    if logged && kind == "tls" {
                        error!(
                            event = "tls_refused",
                            error = %e,
                            attempt = n,
                            retry_in_ms = wait.as_millis() as u64,
                            "poll failed: the server's TLS certificate was refused; backing off"
                        );
                    } else if logged {
                        warn!(
                            event = "poll_failed",
                            error = %e,
                            attempt = n,
                            retry_in_ms = wait.as_millis() as u64,
                            "poll failed; backing off"
                        );
                    } else {
                        debug!(event = "poll_failed", error = %e, attempt = n, "poll failed again");
                    }
                    let _ = self
                        .store
                        .record_poll_error(CURSOR, &e.to_string(), now_ms())
                        .await;
                    wait
                }
            };
            // Never sooner than the interval after the last response; up to 10 % later so
            // many clients do not poll in lockstep.
            next_at = Instant::now() + wait + wait.mul_f64(fastrand::f64() * 0.1);
        }
    }

    async fn interval_hint(&self) -> Duration {
        match self.store.cursor(CURSOR).await {
            Ok(Some(Cursor {
                interval_ms: Some(ms),
                ..
            })) if ms > 0 => Duration::from_millis(ms as u64),
            _ => DEFAULT_INTERVAL,
        }
    }
}
