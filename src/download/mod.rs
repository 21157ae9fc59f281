//! The downloader: a pool of workers fed from SQLite (never from memory), so a restart picks
//! up exactly where the last run stopped.
//!
//! Per item: wait for a data-budget permit → claim the next due item (jmafile first, oldest
//! first) → stream the body through the decompressor into `.tmp/` → fsync → rename into place →
//! fsync the directory → mark done. A crash anywhere in between is harmless: partial files are
//! swept on start, and an item left `fetching` whose final path exists was renamed but not yet
//! recorded, so it is adopted instead of fetched again ([`Downloader::recover`]).
//!
//! Cancellation: shutdown interrupts a transfer (the item goes back to the queue, its attempt
//! not counted); the rename and the final commit are never interrupted.

pub mod decode;
pub mod error;
pub mod plan;
pub mod unpack;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};
use url::Url;

use crate::api::{ApiError, Client};
use crate::config::DownloadSettings;
use crate::health::Health;
use crate::model::{Claim, Claimed, LEASE_RENEW, Source, now_ms};
use crate::sink::Sink;
use crate::state::prelude::*;
use crate::state::{Store, StoreError};
use crate::worker::FailureLog;
use decode::{DecodeError, Decoded};
use plan::Compression;

/// Why one attempt at an item failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("placing the file: {0}")]
    Place(io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    /// Try again later; counts toward `download.max_attempts`.
    Retry {
        base: Duration,
        retry_after: Option<Duration>,
    },
    /// HTTP 429: back off (honouring Retry-After, growing to 45 minutes: the provider has been
    /// seen blocking one id for about 40), but never use up attempts.
    Throttled { retry_after: Option<Duration> },
    /// HTTP 429 "Don't try to get the same data.": the data host blocks this id alone. Wait
    /// `download.same_id_backoff` at once; no attempt used, the data budget left alone.
    SameId,
    /// Permanent: mark the item failed.
    Fail,
    /// Not the item's fault (full disk, refused key): pause every worker, attempt not counted.
    Pause { why: &'static str, wait: Duration },
    /// Shutdown: back to the queue, attempt not counted.
    Requeue,
}

/// An item younger than this answering 403 points at the key (missing jmafile.data scope, IP
/// restriction) rather than at the item having aged out of the one-month window.
const YOUNG: Duration = Duration::from_secs(27 * 86_400);

impl FetchError {
    fn next(&self, item: &Claimed) -> Next {
        let transient = Next::Retry {
            base: Duration::from_secs(2),
            retry_after: None,
        };
        match self {
            // Not the item's fault, and every item of that host would meet it.
            FetchError::Api(e) if e.is_certificate() => Next::Pause {
                why: "a data host's TLS certificate was refused (see the error for the host and what to set)",
                wait: Duration::from_secs(300),
            },
            FetchError::Api(e) => match e.status() {
                Some(401) => Next::Pause {
                    why: "the data host refused the API key (401); check api.key and its jmafile.data/archive.data permissions",
                    wait: Duration::from_secs(300),
                },
                Some(403)
                    if item.source == Source::Jmafile
                        && item
                            .received_ms
                            .is_some_and(|r| now_ms() - r < YOUNG.as_millis() as i64) =>
                {
                    Next::Pause {
                        why: "the data host answered 403 for an item younger than a month: the key may lack the jmafile.data permission or be limited to other IP addresses (changes take up to 5 minutes)",
                        wait: Duration::from_secs(300),
                    }
                }
                Some(429) if e.is_same_id_block() => Next::SameId,
                Some(429) => Next::Throttled {
                    retry_after: e.retry_after(),
                },
                _ if e.is_transient() => Next::Retry {
                    base: Duration::from_secs(2),
                    retry_after: e.retry_after(),
                },
                _ => Next::Fail,
            },
            FetchError::Decode(e) => match e {
                DecodeError::Network(_) | DecodeError::Corrupt(_) | DecodeError::Length(_) => {
                    transient
                }
                DecodeError::TooLarge { .. }
                | DecodeError::Unsupported(_)
                | DecodeError::Refused(_) => Next::Fail,
                DecodeError::Disk { source, .. } => Self::disk(source),
                DecodeError::Cancelled => Next::Requeue,
            },
            FetchError::Place(e) => Self::disk(e),
            FetchError::Internal(_) => transient,
        }
    }

    /// A local write error: a problem of the whole data dir pauses everyone; a problem of this
    /// item's name fails the item; anything else is retried like a network error.
    fn disk(e: &io::Error) -> Next {
        use io::ErrorKind as K;
        match e.kind() {
            K::StorageFull | K::QuotaExceeded => Next::Pause {
                why: "the data dir is full; downloads resume once space is freed",
                wait: Duration::from_secs(30),
            },
            K::ReadOnlyFilesystem | K::PermissionDenied => Next::Pause {
                why: "cannot write to storage.data_dir (read-only filesystem? permissions?)",
                wait: Duration::from_secs(30),
            },
            K::InvalidFilename => Next::Fail,
            _ => Next::Retry {
                base: Duration::from_secs(2),
                retry_after: None,
            },
        }
    }
}

/// An idle worker looks at the queue this often even without a wake-up, to notice items that
/// another process (`jma-poller backfill`) queued.
const IDLE_RECHECK_MS: i64 = 15_000;

/// An idle worker waits at least this long before looking again, even when an item looks due:
/// it may be one the claim refuses (another worker took it, or it is held after a clock
/// jump), and looking again at once would spin.
const IDLE_FLOOR_MS: i64 = 100;

/// A unix-ms time as RFC 3339 (UTC), for log lines.
fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Outcome of one [`Downloader::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Landed,
    Retrying,
    Failed,
    /// Nothing due now.
    Idle,
    /// Downloads are paused (low disk space); the worker waits the pause out.
    Paused,
    Cancelled,
}

pub struct Downloader {
    store: Store,
    client: Arc<Client>,
    /// Where finished items go (staging, atomic commit, adoption after a crash).
    sink: Arc<dyn Sink>,
    settings: DownloadSettings,
    wake: Arc<Notify>,
    /// Set while storage or the key is unusable; every worker waits it out.
    paused_until: Mutex<Option<Instant>>,
    last_orphan_sweep: Mutex<Instant>,
    health: Arc<Health>,
    /// Why downloads are paused, while they are: logged when it starts or changes, and once
    /// more when downloads resume, not on every attempt.
    pause_reason: Mutex<Option<&'static str>>,
}

/// The span every event of one item's attempt runs in (carried into the blocking decoder).
fn item_span(item: &Claimed) -> tracing::Span {
    tracing::info_span!(
        "item",
        source = item.source.as_str(),
        id = %item.id,
        serial = item.serial,
        classification = %item.classification,
        attempt = item.attempts,
    )
}

/// The `reason` label of a retry in the metrics.
fn retry_reason(e: &FetchError) -> &'static str {
    match e {
        FetchError::Api(a) if a.is_same_id_block() => "same_id",
        FetchError::Api(a) => a.status().map_or("network", |_| "http"),
        FetchError::Decode(DecodeError::Network(_)) => "network",
        FetchError::Decode(DecodeError::Corrupt(_)) => "corrupt",
        FetchError::Decode(DecodeError::Length(_)) => "length",
        FetchError::Decode(_) | FetchError::Place(_) => "local",
        FetchError::Internal(_) => "internal",
    }
}

/// How often free space is checked again while downloads are paused for it.
const LOW_SPACE_RECHECK: Duration = Duration::from_secs(10);

/// How often idle workers look for claims whose lease ran out (their holder stopped renewing:
/// a worker that hit a database error after its claim, or another node that died).
const ORPHAN_SWEEP: Duration = Duration::from_secs(60);

impl Downloader {
    pub fn new(
        store: Store,
        client: Arc<Client>,
        sink: Arc<dyn Sink>,
        settings: DownloadSettings,
        wake: Arc<Notify>,
        health: Arc<Health>,
    ) -> Self {
        Downloader {
            store,
            client,
            sink,
            settings,
            wake,
            paused_until: Mutex::new(None),
            last_orphan_sweep: Mutex::new(Instant::now()),
            health,
            pause_reason: Mutex::new(None),
        }
    }

    /// Resolves the claims a previous run of this node left (it crashed or was killed
    /// mid-download), at once: adopted if their file is in place (made durable first: the crash
    /// may have come before the directory fsync), queued again otherwise. Returns (adopted,
    /// requeued).
    pub async fn recover(&self) -> Result<(usize, usize), StoreError> {
        let own = self.store.own_claims().await?;
        self.resolve_in_flight(own).await
    }

    /// Adopts or queues again claims nobody works on any more.
    async fn resolve_in_flight(&self, items: Vec<Claimed>) -> Result<(usize, usize), StoreError> {
        let mut adopted = 0;
        let mut requeued = 0;
        for item in items {
            let sink = self.sink.clone();
            let rel = item.path.clone();
            let in_place = tokio::task::spawn_blocking(move || sink.adopt(&rel).transpose())
                .await
                .unwrap_or(None);
            match in_place {
                // Not recorded when claimed again by someone else meanwhile: theirs to land.
                Some(Ok(bytes)) => {
                    if self.store.mark_done(&item, bytes, now_ms(), &[]).await? {
                        info!(
                            event = "adopted",
                            source = item.source.as_str(),
                            id = %item.id,
                            serial = item.serial,
                            classification = %item.classification,
                            path = %item.path,
                            bytes,
                            "file was in place before its download was recorded; recorded as done without fetching again"
                        );
                        adopted += 1;
                    }
                }
                Some(Err(e)) => {
                    warn!(event = "requeued", id = %item.id, path = %item.path, error = %e, "found in place but cannot be made durable; fetching again");
                    requeued += usize::from(self.store.requeue(&item, Some(&e.to_string())).await?);
                }
                None => {
                    requeued += usize::from(self.store.requeue(&item, None).await?);
                }
            }
        }
        if requeued > 0 {
            info!(
                event = "requeued",
                items = requeued,
                "{requeued} interrupted download(s) queued again"
            );
        }
        Ok((adopted, requeued))
    }

    /// Now and then (idle workers call this), resolves claims whose lease ran out, whoever
    /// held them: nobody renews them, so nobody works on them.
    async fn sweep_orphans(&self) {
        {
            let mut last = self
                .last_orphan_sweep
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < ORPHAN_SWEEP {
                return;
            }
            *last = Instant::now();
        }
        let expired = match self.store.expired_claims(now_ms()).await {
            Ok(expired) => expired,
            Err(e) => {
                debug!(event = "store_error", error = %e, "orphan sweep failed; will try again");
                return;
            }
        };
        if let Err(e) = self.resolve_in_flight(expired).await {
            debug!(event = "store_error", error = %e, "orphan sweep failed; will try again");
        }
    }

    fn paused(&self) -> Option<Instant> {
        let p = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|t| *t > Instant::now())
    }

    /// Pauses all workers for `wait`; true if this starts a pause or changes its reason (log
    /// it then, not per item).
    fn pause(&self, why: &'static str, wait: Duration) -> bool {
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + wait);
        self.health.set_paused(true);
        let mut reason = self.pause_reason.lock().unwrap_or_else(|e| e.into_inner());
        reason.replace(why) != Some(why)
    }

    /// Ends a pause (of this reason, or of any with `None`) because it is over; logs once.
    fn resume_if(&self, only: Option<&'static str>) {
        let was = {
            let mut reason = self.pause_reason.lock().unwrap_or_else(|e| e.into_inner());
            if only.is_some() && *reason != only {
                return;
            }
            reason.take()
        };
        if let Some(why) = was {
            self.health.set_paused(false);
            info!(
                event = "downloads_resumed",
                "downloads resume (they were paused: {why})"
            );
        }
    }

    /// Downloads at most one item among those `claim` allows.
    pub async fn step(
        &self,
        claim: &Claim,
        cancel: &CancellationToken,
    ) -> Result<Step, StoreError> {
        match self.store.next_due_ms(claim).await? {
            Some(due) if due <= now_ms() || due > now_ms() + crate::state::CLOCK_JUMP_MS => {}
            _ => return Ok(Step::Idle),
        }
        if let Some((free, min)) = self.sink.low_on_space() {
            if self.pause("low on space", LOW_SPACE_RECHECK) {
                warn!(
                    event = "downloads_paused",
                    free_bytes = free,
                    min_free = min,
                    "free space in the data dir ({}) is below storage.min_free ({}); downloads paused until space returns",
                    bytesize::ByteSize(free),
                    bytesize::ByteSize(min)
                );
            }
            return Ok(Step::Paused);
        }
        // Space is back; other pauses end when a download actually succeeds.
        self.resume_if(Some("low on space"));
        let permit = tokio::select! {
            p = self.client.data_budget().acquire() => p,
            _ = cancel.cancelled() => return Ok(Step::Cancelled),
        };
        let Some(item) = self.store.claim_next(now_ms(), claim).await? else {
            return Ok(Step::Idle); // another worker was quicker; the permit is refunded
        };
        let span = item_span(&item);
        self.attempt(&item, permit, cancel).instrument(span).await
    }

    /// One attempt at a claimed item, inside its span: fetch and place while the lease is
    /// renewed, then record how it ended.
    async fn attempt(
        &self,
        item: &Claimed,
        permit: crate::api::budget::Permit<'_>,
        cancel: &CancellationToken,
    ) -> Result<Step, StoreError> {
        let started = Instant::now();
        let attempt = async {
            match self.fetch(item, permit, cancel).await {
                Ok(decoded) => self.place(item, decoded).await,
                Err(e) => Err(e),
            }
        };
        let result = self.holding_lease(item, attempt).await;
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((bytes, raw, digests)) => {
                if !self
                    .store
                    .mark_done(item, bytes, now_ms(), &digests)
                    .await?
                {
                    warn!(event = "lease_lost", id = %item.id, serial = item.serial, classification = %item.classification, "landed, but the claim had been taken back (its lease ran out) and the item claimed again; its new holder records it");
                }
                self.health.landed();
                self.resume_if(None);
                // receivedTime → on disk; an archive has only a date, so no latency.
                let latency_ms = (item.source == crate::model::Source::Jmafile)
                    .then_some(item.received_ms)
                    .flatten()
                    .map(|r| now_ms() - r);
                let (source, class) = (item.source.as_str(), item.classification.clone());
                metrics::counter!(crate::metric::ITEMS_DOWNLOADED, "source" => source, "classification" => class).increment(1);
                metrics::counter!(crate::metric::BYTES, "source" => source).increment(bytes);
                metrics::counter!(crate::metric::RAW_BYTES, "source" => source).increment(raw);
                metrics::histogram!(crate::metric::DOWNLOAD_SECONDS, "source" => source)
                    .record(ms as f64 / 1000.0);
                if let Some(l) = latency_ms {
                    metrics::histogram!(crate::metric::END_TO_END_SECONDS)
                        .record(l.max(0) as f64 / 1000.0);
                }
                info!(
                    event = "landed",
                    source = item.source.as_str(),
                    id = %item.id,
                    serial = item.serial,
                    classification = %item.classification,
                    bytes,
                    raw_bytes = raw,
                    ms,
                    latency_ms,
                    attempt = item.attempts,
                    path = %item.path,
                    "landed"
                );
                Ok(Step::Landed)
            }
            Err(e) => self.failed(item, e, ms).await,
        }
    }

    /// Runs `attempt` while renewing `item`'s lease every [`LEASE_RENEW`], so the claim stays
    /// this node's for as long as the download runs and runs out soon after it stops. Only the
    /// renewal is ever dropped (at its wait, or mid-statement: a lost renewal is harmless), never
    /// the attempt.
    async fn holding_lease<T>(&self, item: &Claimed, attempt: impl Future<Output = T>) -> T {
        let renew = async {
            let mut lost = false;
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                match self.store.renew_claim(item, now_ms()).await {
                    Ok(true) => lost = false,
                    Ok(false) if !lost => {
                        lost = true;
                        warn!(event = "lease_lost", id = %item.id, serial = item.serial, classification = %item.classification, "this download's claim was taken back (its lease ran out); finishing it anyway");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        debug!(event = "store_error", id = %item.id, error = %e, "renewing the claim failed; will try again")
                    }
                }
            }
        };
        tokio::pin!(attempt);
        tokio::select! {
            biased;
            out = &mut attempt => return out,
            _ = renew => {}
        }
        // The renewal loop never ends; should it, the attempt still runs to its end.
        attempt.await
    }

    async fn failed(&self, item: &Claimed, e: FetchError, ms: u64) -> Result<Step, StoreError> {
        let error = e.to_string();
        let next = e.next(item);
        // Transient failures beyond download.max_attempts end like permanent ones.
        let exhausted =
            matches!(next, Next::Retry { .. }) && item.attempts >= self.settings.max_attempts;
        if matches!(next, Next::Fail) || exhausted {
            return self.give_up(item, error, exhausted, ms).await;
        }
        if !matches!(next, Next::Requeue) {
            metrics::counter!(crate::metric::RETRIES, "source" => item.source.as_str(), "reason" => retry_reason(&e))
                .increment(1);
        }
        match next {
            Next::Requeue => {
                self.store.mark_retry(item, None, 0, false).await?;
                debug!(event = "requeued", id = %item.id, "download interrupted by shutdown; queued again");
                Ok(Step::Cancelled)
            }
            Next::Pause { why, wait } => self.pause_for(item, &error, why, wait).await,
            // Recorded by `give_up`, with the exhausted retries.
            Next::Fail => Ok(Step::Failed),
            Next::Throttled { retry_after } => self.throttled(item, &error, retry_after).await,
            Next::SameId => self.same_id_blocked(item, &error).await,
            Next::Retry { base, retry_after } => {
                self.retry_later(item, &error, base, retry_after, ms).await
            }
        }
    }

    /// A permanent failure, or transient ones beyond `download.max_attempts`: the item is
    /// failed for good, with one ERROR line.
    async fn give_up(
        &self,
        item: &Claimed,
        error: String,
        exhausted: bool,
        ms: u64,
    ) -> Result<Step, StoreError> {
        let source = item.source.as_str();
        let (error, what) = if exhausted {
            (
                format!("gave up after {} attempts: {error}", item.attempts),
                "item failed after download.max_attempts; it will not be fetched again",
            )
        } else {
            (
                error,
                "item failed permanently; it will not be fetched again (see `jma-poller status`)",
            )
        };
        metrics::counter!(crate::metric::ITEMS_FAILED, "source" => source, "classification" => item.classification.clone()).increment(1);
        self.store.mark_failed(item, &error, now_ms()).await?;
        error!(
            event = "failed",
            source,
            id = %item.id,
            serial = item.serial,
            classification = %item.classification,
            attempt = item.attempts,
            ms,
            error = %error,
            "{what}"
        );
        Ok(Step::Failed)
    }

    /// Storage or the key is unusable: the item waits `wait`, and so does every worker.
    async fn pause_for(
        &self,
        item: &Claimed,
        error: &str,
        why: &'static str,
        wait: Duration,
    ) -> Result<Step, StoreError> {
        self.store
            .mark_retry(item, Some(error), now_ms() + wait.as_millis() as i64, false)
            .await?;
        if self.pause(why, wait) {
            error!(
                event = "downloads_paused",
                id = %item.id,
                error = %error,
                pause_s = wait.as_secs(),
                "{why}; pausing downloads"
            );
        }
        Ok(Step::Retrying)
    }

    /// Rate limited (429): this item backs off, growing with its throttles.
    async fn throttled(
        &self,
        item: &Claimed,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<Step, StoreError> {
        // Retry-After says when; without it (the provider's WAF sends none that is
        // documented) start at a minute and grow to 45.
        let base = if retry_after.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(60)
        };
        let wait = crate::backoff::honour_retry_after(
            crate::backoff::delay(item.throttles + 1, base, Duration::from_secs(2700)),
            retry_after,
            Duration::from_secs(3600),
        );
        let due = self
            .store
            .mark_throttled(item, error, now_ms() + wait.as_millis() as i64)
            .await?;
        warn!(
            event = "throttled",
            source = item.source.as_str(),
            id = %item.id,
            serial = item.serial,
            classification = %item.classification,
            throttles = item.throttles + 1,
            retry_in_ms = (due - now_ms()).max(0),
            error = %error,
            "rate limited (429); backing off this item and the data budget"
        );
        Ok(Step::Retrying)
    }

    /// The data host blocks this id for now: it waits `download.same_id_backoff`.
    async fn same_id_blocked(&self, item: &Claimed, error: &str) -> Result<Step, StoreError> {
        // Rounded up, so the wait is never shorter than same_id_backoff.
        let until = now_ms() + 1 + self.settings.same_id_backoff.as_millis() as i64;
        let due = self.store.mark_same_id_blocked(item, error, until).await?;
        warn!(
            event = "same_id_blocked",
            source = item.source.as_str(),
            id = %item.id,
            serial = item.serial,
            classification = %item.classification,
            until = %fmt_ms(due),
            retry_in_ms = (due - now_ms()).max(0),
            error = %error,
            "the data host blocks this id for now (429 \"same data\"); it waits download.same_id_backoff, other ids go on"
        );
        Ok(Step::Retrying)
    }

    /// A transient failure: retried after the backoff, not sooner than refetch_delay after
    /// this request.
    async fn retry_later(
        &self,
        item: &Claimed,
        error: &str,
        base: Duration,
        retry_after: Option<Duration>,
        ms: u64,
    ) -> Result<Step, StoreError> {
        let wait = crate::backoff::honour_retry_after(
            crate::backoff::delay(item.attempts, base, Duration::from_secs(1800)),
            retry_after,
            Duration::from_secs(3600),
        );
        let due = self
            .store
            .mark_retry(item, Some(error), now_ms() + wait.as_millis() as i64, true)
            .await?;
        warn!(
            event = "retry",
            source = item.source.as_str(),
            id = %item.id,
            serial = item.serial,
            classification = %item.classification,
            attempt = item.attempts,
            ms,
            retry_in_ms = (due - now_ms()).max(0),
            error = %error,
            "download failed; will retry"
        );
        Ok(Step::Retrying)
    }

    /// GET the body and decode it into `.tmp/`.
    async fn fetch(
        &self,
        item: &Claimed,
        permit: crate::api::budget::Permit<'_>,
        cancel: &CancellationToken,
    ) -> Result<Decoded, FetchError> {
        let url =
            Url::parse(&item.url).map_err(|e| FetchError::Internal(format!("bad url: {e}")))?;
        let response = tokio::select! {
            r = self.client.get_data(&url, permit) => r?,
            _ = cancel.cancelled() => return Err(DecodeError::Cancelled.into()),
        };
        let mut plan = item.plan.clone();
        // The body's own header wins over the list: it describes the bytes we are about to read.
        if let Some(h) = response
            .headers()
            .get("dmdata-compression")
            .and_then(|v| v.to_str().ok())
        {
            match Compression::parse(Some(h)) {
                Ok(c) if c != plan.compression => {
                    warn!(event = "compression_mismatch", id = %item.id, header = h, "Dmdata-Compression differs from the list; using the header");
                    plan.compression = c;
                }
                Ok(_) => {}
                Err(e) => return Err(DecodeError::Unsupported(e).into()),
            }
        }
        let max = self.settings.max_size.as_u64();
        if let Some(len) = response.content_length()
            && len > max.saturating_add(max / 16 + 64 * 1024)
        {
            return Err(DecodeError::TooLarge { limit: max }.into());
        }
        let stream = response
            .bytes_stream()
            .map_err(io::Error::other)
            .take_until(cancel.clone().cancelled_owned());
        let reader = SyncIoBridge::new(StreamReader::new(Box::pin(stream)));
        let tmp = self.sink.staging_dir().to_owned();
        let cancel = cancel.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            decode::decode(reader, &plan, &tmp, max, &cancel)
        })
        .await
        .map_err(|e| FetchError::Internal(format!("decoder task: {e}")))?
        .map_err(FetchError::from)
    }

    /// Renames the staged output into place (durably). Returns (bytes, raw bytes, the files'
    /// digests).
    async fn place(
        &self,
        item: &Claimed,
        decoded: Decoded,
    ) -> Result<(u64, u64, Vec<crate::state::FileDigest>), FetchError> {
        let sink = self.sink.clone();
        let rel = item.path.clone();
        let Decoded {
            staged,
            raw_bytes,
            bytes,
            warnings,
            digests,
            ..
        } = decoded;
        for warning in warnings {
            warning.report(item);
        }
        tokio::task::spawn_blocking(move || sink.commit(staged, &rel))
            .await
            .map_err(|e| FetchError::Internal(format!("placing task: {e}")))?
            .map_err(FetchError::Place)?;
        Ok((bytes, raw_bytes, digests))
    }

    /// One worker: steps until `cancel`, sleeping while idle or paused.
    pub async fn run_worker(self: Arc<Self>, claim: Claim, cancel: CancellationToken) {
        let mut store_failures = FailureLog::default();
        loop {
            if let Some(until) = self.paused() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            // Register for a wake-up before looking at the queue, so an item listed between
            // the look and the wait is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.step(&claim, &cancel).await {
                Ok(Step::Cancelled) => return,
                Ok(Step::Paused) => {}
                Ok(Step::Idle) => {
                    store_failures.recovered();
                    self.sweep_orphans().await;
                    let wait = match self.store.next_due_ms(&claim).await {
                        Ok(Some(due)) => Duration::from_millis(
                            (due - now_ms()).clamp(IDLE_FLOOR_MS, IDLE_RECHECK_MS) as u64,
                        ),
                        _ => Duration::from_millis(IDLE_RECHECK_MS as u64),
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Ok(_) => {
                    store_failures.recovered();
                }
                Err(e) => {
                    let n = store_failures.consecutive + 1;
                    if store_failures.failed("store") {
                        error!(event = "store_error", error = %e, "database error in the downloader; retrying");
                    }
                    let wait = crate::backoff::delay(
                        n,
                        Duration::from_millis(500),
                        Duration::from_secs(30),
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}
