//! Daily archives: `GET /v2/archive` lists one `.tar.gz` per JST day and classification. Each
//! check pages the list newest-first (nextToken, same filters on every page) and stops at the
//! first page whose items are all already recorded or older than the horizon; new archives go
//! to the downloader through SQLite in one transaction.
//!
//! The horizon is fixed on the very first check (`archive.backfill` before today, JST), so a
//! late archive for a recent day is still picked up, and history is not re-listed every hour.
//! Paging is capped: the provider has been seen returning nextToken without end.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::FailureLog;
use super::jmafile::PollError;
use crate::api::Client;
use crate::api::models::{ArchiveItem, raw_identity};
use crate::config::ArchiveSettings;
use crate::download::plan::plan_archive;
use crate::health::Health;
use crate::state::{Cursor, NewItem, Source, Store, now_ms};

pub const CURSOR: &str = "archive";
const ENDPOINT: &str = "/v2/archive";
/// Paging guard for the periodic check (a third-party client settled on 20 pages of 100).
pub const MAX_PAGES: u32 = 20;

/// Today's date in Japan, where archive days begin and end.
pub fn jst_today() -> Date {
    OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+9))
        .date()
}

/// Midnight JST of `date` as unix ms: how an archive's date is stored (`received_ms`).
pub fn date_ms(date: Date) -> i64 {
    let t = date.midnight().assume_offset(time::macros::offset!(+9));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn fmt_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Query {
    /// First date (JST) mirrored; fixed on the first check.
    since: Option<String>,
}

/// What one listing pass found.
#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<NewItem>,
    pub pages: u32,
    pub capped: bool,
}

/// Pages `/v2/archive` for `classifications` (empty = all) with dates in `[from, to]` and
/// returns the archives not yet recorded, planned (or refused) for the downloader.
pub async fn list_archives(
    client: &Client,
    store: &Store,
    classifications: &[String],
    from: Date,
    to: Option<Date>,
    keep_tarball: bool,
    max_pages: u32,
) -> Result<Listing, PollError> {
    let mut params: Vec<(&str, String)> = vec![("limit", "100".into())];
    if !classifications.is_empty() {
        params.push(("classification", classifications.join(",")));
    }
    // Whether the end of the range is inclusive is undocumented: ask for a day more and
    // filter here.
    let end = to
        .and_then(|t| t.next_day())
        .map(fmt_date)
        .unwrap_or_default();
    params.push(("datetime", format!("{}~{end}", fmt_date(from))));
    let in_range = |d: Date| d >= from && to.is_none_or(|t| d <= t);

    let mut out = Listing::default();
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = params.clone();
        if let Some(c) = &cursor {
            q.push(("cursorToken", c.clone()));
        }
        let page = client.list(ENDPOINT, &q).await?;
        out.pages += 1;
        let ids: Vec<String> = page
            .items
            .iter()
            .filter_map(|raw| raw_identity(raw).0)
            .collect();
        let known = store.known_ids(Source::Archive, &ids).await?;
        let mut all_old_or_known = true;
        for raw in page.items {
            match serde_json::from_value::<ArchiveItem>(raw.clone()) {
                Ok(a) => {
                    if known.contains(&a.id) || a.date < from {
                        continue;
                    }
                    all_old_or_known = false;
                    if !in_range(a.date) || !seen.insert(a.id.clone()) {
                        continue;
                    }
                    let (plan, path, refused) =
                        match plan_archive(&a, client.trusted(), keep_tarball) {
                            Ok(p) => (Some(p.plan), Some(p.rel_path), None),
                            Err(e) => (None, None, Some(e.to_string())),
                        };
                    out.items.push(NewItem {
                        source: Source::Archive,
                        id: a.id,
                        serial: a.serial,
                        classification: a.classification,
                        received_ms: Some(date_ms(a.date)),
                        url: a.url,
                        plan,
                        path,
                        refused,
                        type_name: None,
                    });
                }
                Err(e) => {
                    let (id, serial) = raw_identity(&raw);
                    match id {
                        Some(id) if !known.contains(&id) => {
                            all_old_or_known = false;
                            if seen.insert(id.clone()) {
                                out.items.push(super::malformed_entry(
                                    Source::Archive,
                                    id,
                                    serial,
                                    &raw,
                                    &e.to_string(),
                                ));
                            }
                        }
                        Some(_) => {}
                        None => error!(
                            event = "entry_skipped",
                            error = %e,
                            "an archive list entry has no id, so it cannot be recorded or fetched"
                        ),
                    }
                }
            }
        }
        match page.next_token {
            Some(t) if !all_old_or_known => {
                if out.pages >= max_pages {
                    warn!(
                        event = "paging_capped",
                        pages = out.pages,
                        "the archive list kept returning nextToken; stopped after {} pages \
                         (the provider has been seen doing this for dates out of range)",
                        out.pages
                    );
                    out.capped = true;
                    break;
                }
                cursor = Some(t);
            }
            _ => break,
        }
    }
    Ok(out)
}

pub struct ArchivePoller {
    client: Arc<Client>,
    store: Store,
    settings: ArchiveSettings,
    /// `storage.retention`.
    retention: Option<Duration>,
    wake: Arc<Notify>,
    health: Arc<Health>,
}

#[derive(Debug, Clone)]
pub struct CheckReport {
    pub new: usize,
    pub refused: usize,
    pub pages: u32,
    pub since: Date,
}

impl ArchivePoller {
    pub fn new(
        client: Arc<Client>,
        store: Store,
        settings: ArchiveSettings,
        retention: Option<Duration>,
        wake: Arc<Notify>,
        health: Arc<Health>,
    ) -> Self {
        ArchivePoller {
            client,
            store,
            settings,
            retention,
            wake,
            health,
        }
    }

    /// One check: list what is new since the horizon and queue it.
    pub async fn check_once(&self) -> Result<CheckReport, PollError> {
        let cursor = self.store.cursor(CURSOR).await?.unwrap_or_default();
        let stored: Query = serde_json::from_str(&cursor.query).unwrap_or_default();
        let since = match stored.since.as_deref().map(crate::api::models::parse_date) {
            Some(Ok(d)) => d,
            _ => {
                let days = (self.settings.backfill.as_secs() / 86_400) as i64;
                let today = jst_today();
                if self.settings.backfill.is_zero() {
                    today
                } else {
                    today - time::Duration::days(days.max(1))
                }
            }
        };
        // Nothing older than the retention period is listed again: it was removed on purpose.
        let since = match self.retention {
            Some(r) => since.max(
                (OffsetDateTime::now_utc() - r)
                    .to_offset(time::macros::offset!(+9))
                    .date(),
            ),
            None => since,
        };
        let listing = list_archives(
            &self.client,
            &self.store,
            &self.settings.classifications,
            since,
            None,
            self.settings.keep_tarball,
            MAX_PAGES,
        )
        .await?;
        let now = now_ms();
        let cursor = Cursor {
            token: None,
            query: serde_json::to_string(&Query {
                since: Some(fmt_date(since)),
            })
            .unwrap_or_else(|_| "{}".into()),
            high_serial: None,
            last_received_ms: None,
            interval_ms: Some(self.settings.check_interval.as_millis() as i64),
            last_poll_ms: Some(now),
            ..Cursor::default()
        };
        let committed = self
            .store
            .commit_poll(CURSOR, &cursor, &listing.items, now)
            .await?;
        for (item, new) in listing.items.iter().zip(&committed.new) {
            if let (true, Some(reason)) = (*new, &item.refused) {
                error!(
                    event = "item_refused",
                    source = "archive",
                    id = %item.id,
                    classification = %item.classification,
                    error = %reason,
                    "archive refused without fetching; it stays failed (see `jma-poller status`)"
                );
            }
        }
        if committed.inserted > 0 {
            self.wake.notify_waiters();
        }
        Ok(CheckReport {
            new: committed.inserted,
            refused: committed.refused,
            pages: listing.pages,
            since,
        })
    }

    /// Checks every `archive.check_interval` until `cancel`; failures back off and retry.
    pub async fn run(self, cancel: CancellationToken) {
        let mut next_at = Instant::now();
        if let Ok(Some(Cursor {
            last_poll_ms: Some(last),
            ..
        })) = self.store.cursor(CURSOR).await
        {
            let interval = self.settings.check_interval.as_millis() as i64;
            // Clamped against a wall clock that went back.
            let wait_ms = (last + interval - now_ms()).min(interval);
            if wait_ms > 0 {
                next_at += Duration::from_millis(wait_ms as u64);
            }
        }
        let mut failures = FailureLog::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next_at) => {}
            }
            let started = Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.check_once() => r,
            };
            match &result {
                Ok(report) => {
                    self.health.poll_succeeded("archive");
                    metrics::counter!("jma_poller_polls_total", "source" => "archive", "result" => "ok").increment(1);
                    metrics::counter!("jma_poller_items_listed_total", "source" => "archive")
                        .increment((report.new + report.refused) as u64);
                }
                Err(e) => {
                    self.health.poll_failed(&e.to_string());
                    metrics::counter!("jma_poller_polls_total", "source" => "archive", "result" => "error").increment(1);
                }
            }
            let wait = match result {
                Ok(report) => {
                    let recovered = failures.recovered();
                    if recovered > 0 {
                        info!(
                            event = "archive_recovered",
                            failures = recovered,
                            "archive checks work again"
                        );
                    }
                    let ms = started.elapsed().as_millis() as u64;
                    if report.new + report.refused > 0 {
                        info!(
                            event = "archive_check",
                            new = report.new,
                            refused = report.refused,
                            pages = report.pages,
                            since = %fmt_date(report.since),
                            ms,
                            "listed {} new archive(s)",
                            report.new + report.refused
                        );
                    } else {
                        debug!(
                            event = "archive_check",
                            new = 0,
                            pages = report.pages,
                            ms,
                            "no new archives"
                        );
                    }
                    self.settings.check_interval
                }
                Err(e) => {
                    let n = failures.consecutive + 1;
                    let auth = matches!(&e, PollError::Api(a) if a.is_auth());
                    let tls = matches!(&e, PollError::Api(a) if a.is_certificate());
                    let retry_after = match &e {
                        PollError::Api(a) => a.retry_after(),
                        _ => None,
                    };
                    let base = if auth {
                        Duration::from_secs(300)
                    } else {
                        Duration::from_secs(10)
                    };
                    let wait = crate::backoff::honour_retry_after(
                        crate::backoff::delay(n, base, self.settings.check_interval.max(base)),
                        retry_after,
                        Duration::from_secs(3600),
                    );
                    let kind = match (auth, tls) {
                        (true, _) => "auth",
                        (_, true) => "tls",
                        _ => "other",
                    };
                    let logged = failures.failed(kind);
                    if logged && tls {
                        error!(
                            event = "tls_refused",
                            error = %e,
                            attempt = n,
                            retry_in_ms = wait.as_millis() as u64,
                            "archive check failed: the server's TLS certificate was refused; backing off"
                        );
                    } else if logged {
                        let hint = if auth {
                            "; the key may lack archive.list or a contract for these classifications"
                        } else {
                            ""
                        };
                        warn!(
                            event = "archive_check_failed",
                            error = %e,
                            attempt = n,
                            retry_in_ms = wait.as_millis() as u64,
                            "archive check failed{hint}; backing off"
                        );
                    }
                    let _ = self
                        .store
                        .record_poll_error(CURSOR, &e.to_string(), now_ms())
                        .await;
                    wait
                }
            };
            next_at = Instant::now() + wait + wait.mul_f64(fastrand::f64() * 0.05);
        }
    }
}
