//! `jma-poller backfill`: queue and download one classification's archives for a date range.
//!
//! SQLite is the single source of truth, so this is safe beside a running daemon: the command
//! lists the range and records what is new; whoever holds the data dir downloads it. If a
//! daemon holds it, the daemon's workers pick the items up and this command only reports
//! progress; if not (or once the daemon stops), this command downloads them itself, through
//! the same request budget (restored from the request log). Interrupted, it leaves the rest
//! queued: running it again resumes, and the daemon would finish them too.
//!
//! The list is asked for a day more at both ends of the range (whether its bounds are
//! inclusive is undocumented) and only the wanted days are queued, so `--from D --to D` lands
//! day D in one list call; days before the service keeps any archive are never asked for
//! ([`crate::poll::archive::request_range`]).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use time::Date;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::{RunError, SHUTDOWN_GRACE};
use crate::config::Settings;
use crate::download::Downloader;
use crate::model::{Claim, now_ms};
use crate::poll::archive::{Listing, date_ms, first_archived_day, fmt_date, list_archives};
use crate::state::Store;
use crate::state::prelude::*;
use crate::storage::{Storage, StorageError};

/// Paging guard: 40 pages of 100 covers ten years of one classification.
const MAX_PAGES: u32 = 40;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    pub interrupted: bool,
    /// Whether this process downloaded (no daemon held the data dir at some point).
    pub downloaded_here: bool,
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: (i64, i64, i64),
    last_line: Option<tokio::time::Instant>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} archives {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            last: (-1, -1, -1),
            last_line: None,
        }
    }

    fn update(&mut self, total: i64, done: i64, failed: i64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position((done + failed) as u64);
            bar.set_message(if failed > 0 {
                format!("({failed} failed)")
            } else {
                String::new()
            });
            bar.tick();
            return;
        }
        // Plain lines off a terminal: on change, at most every 5 s.
        let now = tokio::time::Instant::now();
        let due = self
            .last_line
            .is_none_or(|t| now - t >= Duration::from_secs(5));
        if (total, done, failed) != self.last && due {
            info!(
                event = "backfill_progress",
                total,
                done,
                failed,
                "backfill: {} of {total} archives finished",
                done + failed
            );
            self.last = (total, done, failed);
            self.last_line = Some(now);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Says so when the range reaches before the first day the service keeps (nothing is asked
/// for those days).
fn report_first_day(classification: &str, from: Date, to: Date, listing: &Listing) {
    let first = first_archived_day(classification);
    if let Some(first) = listing.before_first_day {
        warn!(
            event = "backfill_before_archives",
            classification = %classification,
            first = %fmt_date(first),
            "dmdata.jp keeps archives of {classification} from {} on; {}..{} is before that, so there is nothing to list",
            fmt_date(first),
            fmt_date(from),
            fmt_date(to)
        );
    } else if from < first {
        info!(
            event = "backfill_before_archives",
            classification = %classification,
            first = %fmt_date(first),
            "dmdata.jp keeps archives of {classification} from {} on; the days before are not asked for",
            fmt_date(first)
        );
    }
}

pub async fn run(
    settings: Settings,
    classification: String,
    from: Date,
    to: Date,
    cancel: CancellationToken,
) -> Result<Report, RunError> {
    let key = settings.api_key()?;
    // Items landed here get their hook run recorded; the daemon's runner executes it.
    let store = Store::open(settings.storage.database_target()?)
        .await?
        .with_hooks(!settings.hooks.on_file.is_empty())
        .with_refetch_delay(settings.download.refetch_delay);
    let client = crate::app::client(&settings, key, &store).await?;
    let listing = list_archives(
        &client,
        &store,
        std::slice::from_ref(&classification),
        from,
        Some(to),
        settings.archive.keep_tarball,
        MAX_PAGES,
    )
    .await
    .map_err(|e| match e {
        crate::poll::PollError::Api(a) if a.is_no_contract() => {
            let message = match &a {
                crate::api::ApiError::Status { message, .. } => message.clone(),
                other => other.to_string(),
            };
            RunError::NoContract(vec![(
                crate::poll::archive::contract_unit(&classification),
                message,
            )])
        }
        e => RunError::Task(format!("listing archives: {e}")),
    })?;
    report_first_day(&classification, from, to, &listing);
    let committed = store.insert(&listing.items, now_ms()).await?;
    info!(
        event = "backfill_listed",
        classification = %classification,
        from = %fmt_date(from),
        to = %fmt_date(to),
        new = committed.inserted,
        refused = committed.refused,
        pages = listing.pages,
        "backfill: {} archive(s) newly queued",
        committed.inserted
    );

    let claim = Claim::Archives {
        classification: classification.clone(),
        from_ms: date_ms(from),
        to_ms: date_ms(to),
    };
    let workers_cancel = cancel.child_token();
    let mut workers: JoinSet<()> = JoinSet::new();
    let mut report = Report::default();
    let mut told_daemon = false;
    let mut progress = Progress::new();
    loop {
        if workers.is_empty() {
            match Storage::open(&settings.storage.data_dir) {
                Ok(storage) => {
                    let wake = Arc::new(Notify::new());
                    let d = Arc::new(Downloader::new(
                        store.clone(),
                        client.clone(),
                        Arc::new(storage.with_min_free(settings.storage.min_free.as_u64())),
                        settings.download.clone(),
                        wake,
                        Arc::new(crate::health::Health::default()),
                    ));
                    d.recover().await?;
                    info!(
                        event = "backfill_downloading",
                        "no daemon holds the data dir: downloading here"
                    );
                    for _ in 0..settings.download.concurrency {
                        let (d, c, claim) = (d.clone(), workers_cancel.clone(), claim.clone());
                        workers.spawn(async move { d.run_worker(claim, c).await });
                    }
                    report.downloaded_here = true;
                }
                Err(StorageError::Locked { .. }) => {
                    if !told_daemon {
                        info!(
                            event = "backfill_daemon",
                            "a daemon is running on this data dir; it downloads what was queued, this command reports progress"
                        );
                        told_daemon = true;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let counts = store
            .archive_progress(&classification, date_ms(from), date_ms(to))
            .await?;
        let count = |s: &str| {
            counts
                .iter()
                .filter(|(st, _)| st == s)
                .map(|(_, n)| *n)
                .sum::<i64>()
        };
        report.total = counts.iter().map(|(_, n)| n).sum();
        report.done = count("done");
        report.failed = count("failed");
        progress.update(report.total, report.done, report.failed);
        if report.done + report.failed == report.total {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                report.interrupted = true;
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    progress.finish();
    workers_cancel.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    store.close().await;
    Ok(report)
}
