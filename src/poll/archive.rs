//! Daily archives: `GET /v2/archive` lists one `.tar.gz` per JST day and classification. Each
//! check pages the list newest-first (nextToken, same filters on every page) and stops at the
//! first page whose items are all already recorded or older than the horizon; new archives go
//! to the downloader through SQLite in one transaction.
//!
//! The horizon is fixed on the very first check (`archive.backfill` before today, JST), so a
//! late archive for a recent day is still picked up, and history is not re-listed every hour.
//! Paging is capped: the provider has been seen returning nextToken without end.
//!
//! Dates: whether either bound of the list's `datetime` is inclusive is not documented (the
//! docs dropped "end exclusive" in 2025, and a client found the first day missing unless it
//! asked for one more), so the range asked for is one day wider at both ends and only the
//! wanted days are kept here. Archives of the extra days are ignored, not recorded: they stay
//! unknown, so a later check or backfill that wants them queues them then. The range never
//! starts before the first day the service keeps for the classifications
//! ([`first_archived_day`]): a range outside that has been seen to page without end.
//!
//! Contracts: a list refused with 402 `No contract.` for several classifications is split once
//! into one call per classification, so the covered ones go on and the refused ones are known
//! by name; each refused one is asked again on its own every [`super::NO_CONTRACT_RETRY`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::runner::{self, Backoff, Handled, Next};
use super::{FailureLog, PollError};
use crate::api::Client;
use crate::api::models::{ArchiveItem, raw_identity};
use crate::config::ArchiveSettings;
use crate::download::plan::plan_archive;
use crate::health::Health;
use crate::model::{Cursor, NewItem, Source, now_ms};
use crate::state::Store;
use crate::state::prelude::*;

pub use crate::model::ARCHIVE_CURSOR as CURSOR;
const ENDPOINT: &str = "/v2/archive";
/// Paging guard for the periodic check (a third-party client settled on 20 pages of 100).
pub const MAX_PAGES: u32 = 20;

pub use crate::model::time::{date_ms, fmt_date, jst_today, ms_date};

/// The earliest day any archive covers (earthquake, volcano, weather warnings and scheduled
/// telegrams are "all stored" from 2020-11-18 12:00 JST).
pub const FIRST_ARCHIVED_DAY: Date = time::macros::date!(2020 - 11 - 18);

/// The first JST day the service keeps archives of `classification` (dmdata-api.md §7, the
/// docs' "all stored from" dates); unknown names get [`FIRST_ARCHIVED_DAY`].
pub fn first_archived_day(classification: &str) -> Date {
    use time::macros::date;
    match classification {
        "eew.forecast" | "eew.warning" => date!(2022 - 07 - 20),
        "eew.realtime" => date!(2022 - 12 - 08),
        "telegram.forecast" | "telegram.observation" | "telegram.lightning" => {
            date!(2024 - 05 - 21)
        }
        _ => FIRST_ARCHIVED_DAY,
    }
}

/// The first day the service keeps for any of `classifications` (empty = all): one list call
/// covers them all.
pub fn first_kept_day(classifications: &[String]) -> Date {
    classifications
        .iter()
        .map(|c| first_archived_day(c))
        .min()
        .unwrap_or(FIRST_ARCHIVED_DAY)
}

/// The `datetime` bounds to ask for the wanted days `[from, to]`: a day wider at both ends
/// (neither bound is documented as inclusive), but not before [`first_kept_day`]. `None` when
/// every wanted day is before that.
pub fn request_range(
    classifications: &[String],
    from: Date,
    to: Option<Date>,
) -> Option<(Date, Option<Date>)> {
    let kept = first_kept_day(classifications);
    if to.is_some_and(|t| t < kept) {
        return None;
    }
    let start = from.previous_day().unwrap_or(from).max(kept);
    Some((start, to.map(|t| t.next_day().unwrap_or(t))))
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
    /// Archives of the extra days the wider range brought (ignored, not recorded).
    pub outside: u64,
    /// Set when every wanted day is before this, the first day the service keeps: nothing
    /// was asked.
    pub before_first_day: Option<Date>,
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
    let mut out = Listing::default();
    let Some((start, end)) = request_range(classifications, from, to) else {
        out.before_first_day = Some(first_kept_day(classifications));
        return Ok(out);
    };
    let end = end.map(fmt_date).unwrap_or_default();
    params.push(("datetime", format!("{}~{end}", fmt_date(start))));
    let in_range = |d: Date| d >= from && to.is_none_or(|t| d <= t);

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
                    if known.contains(&a.id) {
                        continue;
                    }
                    if a.date < from {
                        out.outside += 1;
                        continue;
                    }
                    all_old_or_known = false;
                    if !in_range(a.date) {
                        out.outside += 1;
                        continue;
                    }
                    if !seen.insert(a.id.clone()) {
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
    if out.outside > 0 {
        debug!(
            event = "archive_outside",
            ignored = out.outside,
            "{} archive(s) of the extra days around the wanted range ignored",
            out.outside
        );
    }
    Ok(out)
}

/// How often a refusal still standing is logged again at ERROR level.
const NO_CONTRACT_REMIND: Duration = Duration::from_secs(3600);

/// A classification the contract refused, and when to ask again.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    due: Instant,
    logged: Instant,
}

/// The name of an archive list unit in health and `/readyz`: `archive` for every
/// classification at once (none configured), `archive:{classification}` for one.
pub fn contract_unit(classification: &str) -> String {
    if classification.is_empty() {
        CURSOR.to_owned()
    } else {
        format!("{CURSOR}:{classification}")
    }
}

/// The contract units a configuration asks for: what must be refused for "nothing covered".
pub fn contract_units(settings: &ArchiveSettings) -> Vec<String> {
    if settings.classifications.is_empty() {
        vec![contract_unit("")]
    } else {
        settings
            .classifications
            .iter()
            .map(|c| contract_unit(c))
            .collect()
    }
}

pub struct ArchivePoller {
    client: Arc<Client>,
    store: Store,
    settings: ArchiveSettings,
    /// `storage.retention`.
    retention: Option<Duration>,
    wake: Arc<Notify>,
    health: Arc<Health>,
    /// The role lease every commit is fenced with (None: unfenced, tests of the poller alone).
    lease: Option<Arc<crate::cluster::RoleLease>>,
    /// Classifications the contract refused, and when each is asked again.
    refused: BTreeMap<String, Refusal>,
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
            lease: None,
            refused: BTreeMap::new(),
        }
    }

    /// Fences every commit with this node's lease on the role: once another node has taken
    /// it, nothing this poller listed is committed.
    pub fn with_lease(mut self, lease: Arc<crate::cluster::RoleLease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// One check: list what is new since the horizon and queue it, for all the configured
    /// classifications.
    #[tracing::instrument(name = "poll", skip_all, fields(source = "archive"))]
    pub async fn check_once(&self) -> Result<CheckReport, PollError> {
        self.check(&self.settings.classifications).await
    }

    /// One check of `classifications` (empty = all the list returns).
    async fn check(&self, classifications: &[String]) -> Result<CheckReport, PollError> {
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
            classifications,
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
        let fence = self.lease.as_ref().map(|l| l.fence()).transpose()?;
        let committed = self
            .store
            .commit_poll(CURSOR, &cursor, &listing.items, now, fence.as_ref())
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

    /// The regular check of every configured classification the contract did not refuse.
    /// A 402 on a check of several splits it: each is asked on its own once, so the covered
    /// ones are listed and the refused ones are known by name. `Ok(None)` when nothing was
    /// left to list.
    async fn check_covered(
        &self,
        refused: &mut BTreeMap<String, Refusal>,
    ) -> Result<Option<CheckReport>, PollError> {
        let configured = &self.settings.classifications;
        let units: Vec<String> = if configured.is_empty() {
            vec![String::new()]
        } else {
            configured.clone()
        };
        let active: Vec<String> = units
            .into_iter()
            .filter(|c| !refused.contains_key(c))
            .collect();
        if active.is_empty() {
            return Ok(None);
        }
        let together: &[String] = if configured.is_empty() { &[] } else { &active };
        match self.check(together).await {
            Ok(report) => {
                for c in &active {
                    self.health.contract_covered(&contract_unit(c));
                }
                Ok(Some(report))
            }
            Err(PollError::Api(e)) if e.is_no_contract() && active.len() == 1 => {
                self.refused(&active[0], &e, refused);
                Ok(None)
            }
            Err(PollError::Api(e)) if e.is_no_contract() => {
                let mut total: Option<CheckReport> = None;
                for c in active {
                    match self.check(std::slice::from_ref(&c)).await {
                        Ok(r) => {
                            self.health.contract_covered(&contract_unit(&c));
                            total = Some(match total {
                                None => r,
                                Some(t) => CheckReport {
                                    new: t.new + r.new,
                                    refused: t.refused + r.refused,
                                    pages: t.pages + r.pages,
                                    since: t.since,
                                },
                            });
                        }
                        Err(PollError::Api(e)) if e.is_no_contract() => {
                            self.refused(&c, &e, refused)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(total)
            }
            Err(e) => Err(e),
        }
    }

    /// Asks each refused classification whose retry is due again, on its own.
    async fn ask_refused_again(&self, refused: &mut BTreeMap<String, Refusal>) {
        let now = Instant::now();
        let due: Vec<String> = refused
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            match self.check(std::slice::from_ref(&c)).await {
                Ok(report) => {
                    refused.remove(&c);
                    self.health.contract_covered(&contract_unit(&c));
                    info!(
                        event = "contract_covered",
                        source = "archive",
                        classification = %c,
                        new = report.new,
                        "the contract covers archive {} now; mirroring it again",
                        contract_unit(&c)
                    );
                    if report.new > 0 {
                        self.wake.notify_waiters();
                    }
                }
                Err(PollError::Api(e)) if e.is_no_contract() => self.refused(&c, &e, refused),
                Err(e) => {
                    // Not an answer about the contract: asked again with the next retry.
                    debug!(event = "contract_retry_failed", classification = %c, error = %e);
                    if let Some(r) = refused.get_mut(&c) {
                        r.due = now + super::NO_CONTRACT_RETRY;
                    }
                }
            }
        }
    }

    /// HTTP 402 `No contract.` for `classification` (empty = every classification): one
    /// ERROR line (again after an hour if still refused), readiness failing with the reason,
    /// and that classification asked again every [`super::NO_CONTRACT_RETRY`] while the
    /// others go on.
    fn refused(
        &self,
        classification: &str,
        error: &crate::api::ApiError,
        refused: &mut BTreeMap<String, Refusal>,
    ) {
        let now = Instant::now();
        let unit = contract_unit(classification);
        let message = match error {
            crate::api::ApiError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let wait = super::NO_CONTRACT_RETRY;
        let remind = refused
            .get(classification)
            .is_none_or(|r| now.duration_since(r.logged) >= NO_CONTRACT_REMIND);
        let what = if classification.is_empty() {
            "any archive; set archive.enabled = false if archives are not wanted".to_owned()
        } else {
            format!(
                "archive classification {classification}; remove it from archive.classifications if it is not wanted"
            )
        };
        if remind {
            error!(
                event = "no_contract",
                source = "archive",
                classification = %classification,
                error = %error,
                retry_in_s = wait.as_secs(),
                "the account's contract does not cover {what} (HTTP 402 {message:?}). Add the contract in the dmdata.jp console; asking again every {} minutes, the other sources go on",
                wait.as_secs() / 60
            );
        }
        metrics::counter!(crate::metric::POLLS, "source" => "archive", "result" => "no_contract")
            .increment(1);
        self.health.contract_refused(&unit, &message);
        let logged = match refused.get(classification) {
            Some(r) if !remind => r.logged,
            _ => now,
        };
        refused.insert(
            classification.to_owned(),
            Refusal {
                due: now + wait,
                logged,
            },
        );
    }

    /// The first check after a start waits what is left of `archive.check_interval` since
    /// the last one.
    async fn first_wait(&self) -> Duration {
        let Ok(Some(Cursor {
            last_poll_ms: Some(last),
            ..
        })) = self.store.cursor(CURSOR).await
        else {
            return Duration::ZERO;
        };
        let interval = self.settings.check_interval.as_millis() as i64;
        // Clamped against a wall clock that went back.
        let wait_ms = (last + interval - now_ms()).min(interval);
        Duration::from_millis(wait_ms.max(0) as u64)
    }

    /// Logs a successful check (the runner counts it).
    fn report(&self, report: &CheckReport, started: Instant) {
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
    }
}

/// The archive check in the [`runner`]: the runner schedules, backs off and counts; the
/// check knows its contract units and asks refused ones again meanwhile.
impl runner::Source for ArchivePoller {
    fn source(&self) -> &'static str {
        "archive"
    }

    fn unit(&self) -> &str {
        CURSOR
    }

    async fn first_wait(&mut self) -> Duration {
        ArchivePoller::first_wait(self).await
    }

    async fn step(&mut self) -> Result<Next, PollError> {
        let started = Instant::now();
        let mut refused = std::mem::take(&mut self.refused);
        let result = self.check_covered(&mut refused).await;
        self.refused = refused;
        let Some(report) = result? else {
            // Every classification is refused: each is asked again on its own.
            return Ok(Next::Idle(self.settings.check_interval));
        };
        self.report(&report, started);
        Ok(Next::Listed {
            items: (report.new + report.refused) as u64,
            wait: self.settings.check_interval,
        })
    }

    async fn failed(&mut self, error: PollError, _: &mut FailureLog) -> Handled {
        let auth = matches!(&error, PollError::Api(a) if a.is_auth());
        let tls = matches!(&error, PollError::Api(a) if a.is_certificate());
        let retry_after = match &error {
            PollError::Api(a) => a.retry_after(),
            _ => None,
        };
        let base = if auth {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(10)
        };
        let _ = self
            .store
            .record_poll_error(CURSOR, &error.to_string(), now_ms())
            .await;
        Handled::Backoff(Backoff {
            kind: match (auth, tls) {
                (true, _) => "auth",
                (_, true) => "tls",
                _ => "other",
            },
            base,
            cap: self.settings.check_interval.max(base),
            floor: Duration::ZERO,
            retry_after,
            hint: if auth {
                "; the key may lack archive.list or a contract for these classifications"
            } else {
                ""
            },
        })
    }

    fn meanwhile_due(&self) -> Option<Instant> {
        self.refused.values().map(|r| r.due).min()
    }

    async fn meanwhile(&mut self) {
        let mut refused = std::mem::take(&mut self.refused);
        self.ask_refused_again(&mut refused).await;
        self.refused = refused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn names(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_range_asked_is_a_day_wider_but_never_before_the_first_archived_day() {
        let d = date!(2025 - 02 - 13);
        let eq = names(&["telegram.earthquake"]);
        assert_eq!(
            request_range(&eq, d, Some(d)),
            Some((date!(2025 - 02 - 12), Some(date!(2025 - 02 - 14))))
        );
        assert_eq!(
            request_range(&eq, d, None),
            Some((date!(2025 - 02 - 12), None))
        );
        let eew = names(&["eew.forecast"]);
        assert_eq!(
            request_range(&eew, date!(2020 - 01 - 01), Some(date!(2022 - 08 - 01))),
            Some((date!(2022 - 07 - 20), Some(date!(2022 - 08 - 02))))
        );
        assert_eq!(
            request_range(&eew, date!(2022 - 07 - 21), Some(date!(2022 - 07 - 21))),
            Some((date!(2022 - 07 - 20), Some(date!(2022 - 07 - 22))))
        );
        assert_eq!(
            request_range(&eew, date!(2021 - 01 - 01), Some(date!(2022 - 07 - 19))),
            None
        );
        // Several classifications share one range: the earliest first day applies.
        let both = names(&["telegram.lightning", "eew.realtime"]);
        assert_eq!(
            request_range(&both, date!(2000 - 01 - 01), None),
            Some((date!(2022 - 12 - 08), None))
        );
        assert_eq!(
            request_range(&[], date!(2000 - 01 - 01), None),
            Some((FIRST_ARCHIVED_DAY, None))
        );
        assert_eq!(
            first_archived_day("telegram.some-new-one"),
            FIRST_ARCHIVED_DAY
        );
    }

    #[test]
    fn a_stored_date_reads_back_as_itself() {
        for d in [
            date!(2020 - 11 - 18),
            date!(2025 - 12 - 31),
            date!(2024 - 02 - 29),
        ] {
            assert_eq!(ms_date(date_ms(d)), Some(d));
        }
    }
}
