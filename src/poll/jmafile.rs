//! JmaFile PuLL: `GET /v2/jmafile`, following `nextPooling` as the next `cursorToken`.
//!
//! * First start: list without a cursor and page back (nextToken) over `jmafile.backfill`.
//! * Afterwards: poll with the stored token, never sooner than `nextPoolingInterval` after the
//!   previous response (across restarts too: the time is stored).
//! * A page that carries `nextToken` is followed back until a serial we already know, so a
//!   backlog larger than `limit` is never lost, whichever end of it the server returns first.
//! * A refused cursor (HTTP 400 about `cursorToken`) drops the token; the next poll lists
//!   without one and pages back to the highest known serial: no gap, and duplicates are
//!   ignored by id.
//! * New items and the new cursor are committed in one transaction.
//!
//! Cancellation: the loop stops at waits and while a list call is in flight; a commit that has
//! started always finishes.

use std::collections::HashSet;
use std::sync::Arc;
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
use crate::state::{Cursor, NewItem, Source, Store, StoreError, now_ms};

pub const CURSOR: &str = "jmafile";
const ENDPOINT: &str = "/v2/jmafile";
/// Paging guard: the provider has been seen returning nextToken without end.
pub const MAX_PAGES: u32 = 500;
/// Used when a response omits nextPoolingInterval (the documented example is 1600 ms).
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1600);
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
    /// `datetime` lower bound (UTC, `YYYY-MM-DDTHH:MM:SS`), when one was used.
    since: Option<String>,
}

/// Outcome of one poll.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub new: usize,
    pub refused: usize,
    pub pages: u32,
    /// nextPoolingInterval of this response: the earliest the next poll may go out.
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

    fn id(&self) -> Option<&str> {
        match self {
            Entry::Ok(i) => Some(&i.id),
            Entry::Bad { id, .. } => id.as_deref(),
        }
    }
}

/// What the list calls of one poll returned, before anything is committed.
struct Collected {
    entries: Vec<Entry>,
    pooling: String,
    interval: Duration,
    query: Query,
    high_serial: Option<u64>,
    last_received_ms: Option<i64>,
    pages: u32,
}

pub struct JmaFilePoller {
    client: Arc<Client>,
    store: Store,
    settings: JmaFileSettings,
    max_size: u64,
    wake: Arc<Notify>,
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
        wake: Arc<Notify>,
    ) -> Self {
        JmaFilePoller {
            client,
            store,
            settings,
            max_size,
            wake,
        }
    }

    /// One poll: list (following pages as needed), then commit items and cursor together.
    pub async fn poll_once(&self) -> Result<PollReport, PollError> {
        let collected = self.collect().await?;
        self.commit(collected).await
    }

    /// The network half of a poll. Safe to cancel: nothing is written.
    async fn collect(&self) -> Result<Collected, PollError> {
        let cursor = self.store.cursor(CURSOR).await?.unwrap_or_default();
        let stored: Query = serde_json::from_str(&cursor.query).unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        let types_changed = cursor.high_serial.is_some() && stored.types != self.settings.types;
        // Decide where to start and where to stop paging back.
        let (token, query, stop_serial, horizon) = match &cursor.token {
            Some(token) if !types_changed => {
                (Some(token.clone()), stored, cursor.high_serial, None)
            }
            _ => {
                let horizon = match (types_changed, cursor.last_received_ms) {
                    // Token refused or lost: back to the newest item we know, with slack.
                    (false, Some(ms)) => ms_to_time(ms) - BASELINE_SLACK,
                    // First start, or the set of types changed: the backfill window.
                    _ => now - self.settings.backfill,
                };
                if types_changed {
                    info!(
                        event = "types_changed",
                        "jmafile.types changed; listing the backfill window for the new set"
                    );
                }
                let stop = if types_changed {
                    None
                } else {
                    cursor.high_serial
                };
                let query = Query {
                    types: self.settings.types.clone(),
                    since: Some(utc_stamp(horizon)),
                };
                (None, query, stop, Some(horizon))
            }
        };
        let mut params: Vec<(&str, String)> = vec![("limit", self.settings.limit.to_string())];
        if !query.types.is_empty() {
            params.push(("type", query.types.join(",")));
        }
        if let Some(since) = &query.since {
            params.push(("datetime", format!("{since}~")));
        }

        let mut seen: HashSet<String> = HashSet::new();
        let mut entries = Vec::new();
        let mut high_serial = cursor.high_serial;
        let mut last_received_ms = cursor.last_received_ms;
        let mut pages = 0u32;
        let mut next = token;
        let mut head: Option<(String, Duration)> = None;
        loop {
            let mut q = params.clone();
            if let Some(t) = &next {
                q.push(("cursorToken", t.clone()));
            }
            let page: ListPage = self.client.list(ENDPOINT, &q).await?;
            pages += 1;
            if head.is_none() {
                let pooling = page
                    .next_pooling
                    .clone()
                    .ok_or_else(|| ApiError::Malformed {
                        endpoint: ENDPOINT.into(),
                        detail: "nextPooling is missing".into(),
                    })?;
                let interval = page
                    .next_pooling_interval
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_INTERVAL)
                    .min(Duration::from_secs(3600));
                head = Some((pooling, interval));
            }
            let mut reached = false;
            for raw in page.items {
                let entry = Entry::parse(raw);
                // Only a well-formed item moves the paging bounds: a garbled entry's serial
                // could be anything, and trusting it could make us stop paging too early.
                if let Entry::Ok(item) = &entry {
                    let s = item.serial;
                    high_serial = Some(high_serial.map_or(s, |h| h.max(s)));
                    if stop_serial.is_some_and(|known| s <= known) {
                        reached = true;
                        continue;
                    }
                    let ms = time_to_ms(item.received_time);
                    last_received_ms = Some(last_received_ms.map_or(ms, |l| l.max(ms)));
                    if horizon.is_some_and(|h| item.received_time < h) {
                        reached = true;
                        continue;
                    }
                }
                if let Some(id) = entry.id()
                    && !seen.insert(id.to_owned())
                {
                    continue;
                }
                entries.push(entry);
            }
            match page.next_token {
                Some(t) if !reached => {
                    if pages >= MAX_PAGES {
                        error!(
                            event = "paging_capped",
                            pages,
                            "stopped paging back after {pages} pages; older items in this backlog \
                             may be missing (check jmafile.types or jmafile.backfill)"
                        );
                        break;
                    }
                    next = Some(t);
                }
                _ => break,
            }
        }
        let (pooling, interval) = head.expect("at least one page was fetched");
        Ok(Collected {
            entries,
            pooling,
            interval,
            query,
            high_serial,
            last_received_ms,
            pages,
        })
    }

    /// The database half of a poll; not cancelled once started.
    async fn commit(&self, c: Collected) -> Result<PollReport, PollError> {
        let trusted = self.client.trusted();
        let mut items = Vec::with_capacity(c.entries.len());
        // Oldest first, so serials and arrival order agree in the table.
        for entry in c.entries.into_iter().rev() {
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
                } => items.push(NewItem {
                    source: Source::Jmafile,
                    id,
                    serial,
                    classification: raw
                        .get("classification")
                        .and_then(|v| v.as_str())
                        .unwrap_or("unknown")
                        .to_owned(),
                    received_ms: None,
                    url: raw
                        .get("url")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_owned(),
                    plan: None,
                    path: None,
                    refused: Some(format!("malformed list entry: {reason}")),
                }),
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
        let cursor = Cursor {
            token: Some(c.pooling),
            query: serde_json::to_string(&c.query).unwrap_or_else(|_| "{}".into()),
            high_serial: c.high_serial,
            last_received_ms: c.last_received_ms,
            interval_ms: Some(c.interval.as_millis() as i64),
            last_poll_ms: Some(now),
        };
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
            pages: c.pages,
            interval: c.interval,
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
                let wait_ms = last + interval - now_ms();
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_at) => {}
            }
            let started = Instant::now();
            let collected = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                c = self.collect() => c,
            };
            let result = match collected {
                Ok(c) => self.commit(c).await,
                Err(e) => Err(e),
            };
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
                            pages = report.pages,
                            ms,
                            "listed {} new item(s)",
                            report.new + report.refused
                        );
                    } else {
                        debug!(
                            event = "poll",
                            new = 0,
                            pages = report.pages,
                            ms,
                            "no new items"
                        );
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
                    if failures.failed(kind) {
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
