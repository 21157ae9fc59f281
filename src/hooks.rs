//! The post-download hook (`hooks.on_file`): a command run for every landed item, so decoders
//! or uploaders can follow the mirror without watching the disk.
//!
//! At least once: the run is recorded in SQLite in the same transaction that marks the item
//! done; a run interrupted by shutdown or a crash goes back to the queue. A failing run is
//! retried with backoff up to `hooks.max_attempts`, then recorded as failed (the item itself
//! stays done). Runs are sequential, in landing order, each under `hooks.timeout`.
//!
//! The command gets the item's absolute path as its last argument and in `JMA_POLLER_PATH`,
//! plus `JMA_POLLER_ID`, `JMA_POLLER_SERIAL`, `JMA_POLLER_CLASSIFICATION`, `JMA_POLLER_SOURCE`,
//! `JMA_POLLER_KIND` (`file`, or `folder` for concat items and archives) and
//! `JMA_POLLER_ATTEMPT`. No shell is involved.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, warn};

use crate::config::HookSettings;
use crate::health::Health;
use crate::model::now_ms;
use crate::sink::Sink;
use crate::state::prelude::*;
use crate::state::{HookJob, HookOutcome, Store};

/// What the last part of a failing hook's stderr is kept for the error message.
const STDERR_TAIL: usize = 2048;

enum Ran {
    Ok,
    Failed { code: Option<i32>, error: String },
    Interrupted,
}

async fn run_one(
    job: &HookJob,
    sink: &dyn Sink,
    settings: &HookSettings,
    cancel: &CancellationToken,
) -> Ran {
    let path = sink.locate(&job.path);
    let kind = if path.is_dir() { "folder" } else { "file" };
    let (program, args) = match settings.on_file.split_first() {
        Some(p) => p,
        None => return Ran::Ok,
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg(&path)
        .env("JMA_POLLER_PATH", &path)
        .env("JMA_POLLER_ID", &job.id)
        .env(
            "JMA_POLLER_SERIAL",
            job.serial.map(|s| s.to_string()).unwrap_or_default(),
        )
        .env("JMA_POLLER_CLASSIFICATION", &job.classification)
        .env("JMA_POLLER_SOURCE", &job.source)
        .env("JMA_POLLER_KIND", kind)
        .env("JMA_POLLER_ATTEMPT", job.attempts.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ran::Failed {
                code: None,
                error: format!("cannot start {program:?}: {e}"),
            };
        }
    };
    let mut stderr = child.stderr.take();
    // Drain stderr (a full pipe would block the hook), keeping its tail for the error.
    let drain = async {
        let mut tail = Vec::new();
        if let Some(err) = stderr.as_mut() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
        tail
    };
    let run = async { tokio::join!(child.wait(), drain) };
    tokio::select! {
        _ = cancel.cancelled() => Ran::Interrupted,
        r = tokio::time::timeout(settings.timeout, run) => match r {
            Err(_) => Ran::Failed {
                code: None,
                error: format!("timed out after {} (hooks.timeout); killed", humantime::format_duration(settings.timeout)),
            },
            Ok((Ok(status), _)) if status.success() => Ran::Ok,
            Ok((Ok(status), tail)) => {
                let text = String::from_utf8_lossy(&tail);
                let last = text.trim().lines().last().unwrap_or("").to_owned();
                Ran::Failed {
                    code: status.code(),
                    error: match status.code() {
                        Some(c) => format!("exit code {c}{}", if last.is_empty() { String::new() } else { format!(": {last}") }),
                        None => format!("killed by a signal{}", if last.is_empty() { String::new() } else { format!(": {last}") }),
                    },
                }
            }
            Ok((Err(e), _)) => Ran::Failed { code: None, error: format!("waiting for the hook: {e}") },
        },
    }
}

/// Runs queued hooks until `cancel`.
pub async fn run(
    store: Store,
    sink: Arc<dyn Sink>,
    settings: HookSettings,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    match store.requeue_running_hooks().await {
        Ok(0) => {}
        Ok(n) => warn!(
            event = "hook_requeued",
            runs = n,
            "{n} hook run(s) interrupted by the last stop will run again"
        ),
        Err(e) => error!(event = "store_error", error = %e, "cannot requeue interrupted hook runs"),
    }
    let mut errors = 0u32;
    loop {
        let landing = health.landing();
        tokio::pin!(landing);
        landing.as_mut().enable();
        let job = match store.claim_hook(now_ms()).await {
            Ok(job) => {
                errors = 0;
                job
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    error!(event = "store_error", error = %e, "database error in the hook runner; retrying");
                }
                let wait = crate::backoff::delay(
                    errors,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                );
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let Some(job) = job else {
            let wait = match store.next_hook_due_ms().await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, 15_000) as u64),
                _ => Duration::from_secs(15),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut landing => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        };
        let started = tokio::time::Instant::now();
        let span = tracing::info_span!(
            "hook",
            source = %job.source,
            id = %job.id,
            serial = job.serial,
            classification = %job.classification,
        );
        let ran = run_one(&job, sink.as_ref(), &settings, &cancel)
            .instrument(span)
            .await;
        let ms = started.elapsed().as_millis() as u64;
        let now = now_ms();
        let outcome = match &ran {
            Ran::Ok => {
                metrics::counter!(crate::metric::HOOK_RUNS, "result" => "ok").increment(1);
                debug!(event = "hook", id = %job.id, path = %job.path, ms, "hook ran");
                HookOutcome::Done
            }
            Ran::Interrupted => HookOutcome::Interrupted,
            Ran::Failed { code, error } if job.attempts >= settings.max_attempts => {
                metrics::counter!(crate::metric::HOOK_RUNS, "result" => "gave_up").increment(1);
                error!(
                    event = "hook_failed",
                    id = %job.id,
                    classification = %job.classification,
                    path = %job.path,
                    attempt = job.attempts,
                    ms,
                    error = %error,
                    "hook failed {} times; giving up on this item (it stays on disk; see `jma-poller status`)",
                    job.attempts
                );
                HookOutcome::Failed { code: *code, error }
            }
            Ran::Failed { code, error } => {
                metrics::counter!(crate::metric::HOOK_RUNS, "result" => "failed").increment(1);
                let wait = crate::backoff::delay(
                    job.attempts,
                    Duration::from_secs(5),
                    Duration::from_secs(600),
                );
                warn!(
                    event = "hook_failed",
                    id = %job.id,
                    classification = %job.classification,
                    path = %job.path,
                    attempt = job.attempts,
                    ms,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %error,
                    "hook failed; will run it again"
                );
                HookOutcome::Retry {
                    code: *code,
                    error,
                    at_ms: now + wait.as_millis() as i64,
                }
            }
        };
        if let Err(e) = store.finish_hook(job.seq, outcome, now).await {
            error!(event = "store_error", error = %e, "cannot record a hook run; it will run again");
        }
        if matches!(ran, Ran::Interrupted) {
            return;
        }
    }
}
