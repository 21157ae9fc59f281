//! The one loop every list source runs in (garage's Worker shape): a [`Source`] says how to
//! take one step and what its own failures mean; [`run`] owns everything around the steps:
//! the schedule, cancellation, the backoff honouring `Retry-After`, the failure log throttled
//! to one line per change, health, poll metrics and the one jitter ([`JITTER`]).
//!
//! A new source is one file implementing [`Source`] plus its config section; it gets all of
//! the above without copying a loop.
//!
//! Cancellation: the runner stops at its waits, and a step in flight is dropped at its next
//! await. A source writes a step's results in one transaction at its end, so a dropped step
//! has written nothing or everything; a commit that has started is never half done.
//!
//! Every step starts in one place ([`run`], right before `source.step()`), so gating steps
//! (a per-source leader lease, say) is one condition there; [`Source::source`] names the
//! source (`"jmafile"`, `"archive"`) for that.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{FailureLog, PollError};
use crate::api::ApiError;
use crate::health::Health;

/// The next step goes out up to this fraction of its wait later than due (uniformly random),
/// so many clients started together (a fleet rebooted, a cron of containers) never poll in
/// lockstep. Never earlier: a wait is often the server's own minimum (`nextPoolingInterval`,
/// `Retry-After`).
pub const JITTER: f64 = 0.1;

/// Upstream's `Retry-After` is honoured up to this; a "retry in a day" must not stall a source.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// What a successful step says about the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A list call went out and its items are committed: counted as a poll, and the next step
    /// goes `wait` later (plus jitter; zero for "at once", a backlog page).
    Listed { items: u64, wait: Duration },
    /// Nothing was asked (every unit is refused by the contract, say): not counted as a poll,
    /// the next step goes `wait` later, without jitter.
    Idle(Duration),
}

/// How the runner goes on after a failed step, as the source decided.
#[derive(Debug)]
pub enum Handled {
    /// The source dealt with the failure itself (its own log line, readiness); the next step
    /// goes this much later (plus jitter).
    Wait(Duration),
    /// A plain failure: the runner backs off and logs it once per change of `kind`.
    Backoff(Backoff),
    /// Retrying cannot help (the key refused on the first request of the process): the
    /// runner stops with this error, and with it the application.
    Fatal(ApiError),
}

/// An exponential backoff for a plain failure, computed and logged by the runner.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// What failed (`"api"`, `"tls"`, `"auth"`, `"store"`...): a change is logged at once,
    /// a repeat only as a reminder. `"tls"` is logged at ERROR level.
    pub kind: &'static str,
    /// The first delay (doubling per consecutive failure, half of it random) ...
    pub base: Duration,
    /// ... up to this.
    pub cap: Duration,
    /// Never sooner than this (the source's own interval).
    pub floor: Duration,
    /// The server's `Retry-After`, a lower bound.
    pub retry_after: Option<Duration>,
    /// Appended to the WARN line (what an operator may check).
    pub hint: &'static str,
}

/// A list source: one step at a time, driven by [`run`].
pub trait Source: Send {
    /// The source's name (`"jmafile"`, `"archive"`): metrics label, health, and the name a
    /// per-source gate (a leader lease) would go by.
    fn source(&self) -> &'static str;

    /// What this runner polls, for log lines: a stream's name, or the source's.
    fn unit(&self) -> &str;

    /// `Some(grace)` when the runner is a watched stream: it promises the watchdog a step
    /// within its schedule plus `grace` (see [`Health::promise_for`]).
    fn watchdog_grace(&self) -> Option<Duration> {
        None
    }

    /// How long after start the first step may go (a stored interval survives a restart).
    fn first_wait(&mut self) -> impl Future<Output = Duration> + Send;

    /// One step: one listing, its items and the new cursor committed together.
    fn step(&mut self) -> impl Future<Output = Result<Next, PollError>> + Send;

    /// What a failed step means for this source. It records the error where the source keeps
    /// it, and may handle the kinds it knows itself (using `failures` to throttle its lines).
    fn failed(
        &mut self,
        error: PollError,
        failures: &mut FailureLog,
    ) -> impl Future<Output = Handled> + Send;

    /// When [`Source::meanwhile`] wants to run before the next step, if ever.
    fn meanwhile_due(&self) -> Option<Instant> {
        None
    }

    /// Side work at every wake-up before the next step (archive: asking a classification the
    /// contract refused again). Not counted as a poll.
    fn meanwhile(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs `source` until `cancel`. Returns an error only when the source says retrying cannot
/// help ([`Handled::Fatal`]).
pub async fn run<S: Source>(
    mut source: S,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<(), ApiError> {
    let mut next_at = Instant::now() + source.first_wait().await;
    let mut failures = FailureLog::default();
    loop {
        promise(&source, &health, next_at);
        let wake_at = source.meanwhile_due().map_or(next_at, |d| d.min(next_at));
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(wake_at) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = source.meanwhile() => {}
        }
        if Instant::now() < next_at {
            continue;
        }
        promise(&source, &health, Instant::now());
        // Every step of every source starts here, and only here.
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = source.step() => r,
        };
        let wait = match result {
            Ok(Next::Idle(wait)) => {
                next_at = Instant::now() + wait;
                continue;
            }
            Ok(Next::Listed { items, wait }) => {
                succeeded(&source, &health, &mut failures, items);
                wait
            }
            Err(e) => {
                let text = e.to_string();
                health.poll_failed(&text);
                metrics::counter!(crate::metric::POLLS, "source" => source.source(), "result" => "error").increment(1);
                match source.failed(e, &mut failures).await {
                    Handled::Wait(wait) => wait,
                    Handled::Backoff(b) => back_off(&source, &b, &text, &mut failures),
                    Handled::Fatal(e) => return Err(e),
                }
            }
        };
        next_at = Instant::now() + jittered(wait);
    }
}

/// `wait` plus up to [`JITTER`] of it.
pub fn jittered(wait: Duration) -> Duration {
    wait + wait.mul_f64(fastrand::f64() * JITTER)
}

/// A watched stream promises the watchdog its next step by `next_at` plus its grace.
fn promise<S: Source>(source: &S, health: &Health, next_at: Instant) {
    if let Some(grace) = source.watchdog_grace() {
        health.promise_for(
            source.unit(),
            next_at.saturating_duration_since(Instant::now()) + grace,
        );
    }
}

/// Health, metrics and the "works again" line after a successful step.
fn succeeded<S: Source>(source: &S, health: &Health, failures: &mut FailureLog, items: u64) {
    let name = source.source();
    health.poll_succeeded(name);
    metrics::counter!(crate::metric::POLLS, "source" => name, "result" => "ok").increment(1);
    metrics::counter!(crate::metric::ITEMS_LISTED, "source" => name).increment(items);
    let recovered = failures.recovered();
    if recovered > 0 {
        info!(
            event = "poll_recovered",
            source = name,
            unit = %source.unit(),
            failures = recovered,
            "polling {} works again after {recovered} failed attempt(s)",
            source.unit()
        );
    }
}

/// The wait after a plain failure, logged once per change of kind (and as a reminder).
fn back_off<S: Source>(
    source: &S,
    b: &Backoff,
    error: &str,
    failures: &mut FailureLog,
) -> Duration {
    let n = failures.consecutive + 1;
    let wait = crate::backoff::honour_retry_after(
        crate::backoff::delay(n, b.base, b.cap).max(b.floor),
        b.retry_after,
        RETRY_AFTER_CAP,
    );
    let (name, unit) = (source.source(), source.unit());
    let retry_in_ms = wait.as_millis() as u64;
    let logged = failures.failed(b.kind);
    if logged && b.kind == "tls" {
        error!(
            event = "tls_refused",
            source = name,
            unit = %unit,
            error = %error,
            attempt = n,
            retry_in_ms,
            "{unit}: poll failed: the server's TLS certificate was refused; backing off"
        );
    } else if logged {
        warn!(
            event = "poll_failed",
            source = name,
            unit = %unit,
            error = %error,
            attempt = n,
            retry_in_ms,
            "{unit}: poll failed{}; backing off",
            b.hint
        );
    } else {
        debug!(event = "poll_failed", source = name, unit = %unit, error = %error, attempt = n, "poll failed again");
    }
    wait
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// A source that plays back scripted step outcomes and notes when each step started.
    struct Script {
        outcomes: VecDeque<Result<Next, PollError>>,
        steps: Arc<Mutex<Vec<Instant>>>,
        done: CancellationToken,
    }

    impl Source for Script {
        fn source(&self) -> &'static str {
            "script"
        }
        fn unit(&self) -> &str {
            "script"
        }
        async fn first_wait(&mut self) -> Duration {
            Duration::from_secs(5)
        }
        async fn step(&mut self) -> Result<Next, PollError> {
            self.steps.lock().unwrap().push(Instant::now());
            match self.outcomes.pop_front() {
                Some(outcome) => outcome,
                None => {
                    self.done.cancel();
                    std::future::pending().await
                }
            }
        }
        async fn failed(&mut self, error: PollError, _: &mut FailureLog) -> Handled {
            match error {
                PollError::Api(e) if e.is_auth() => Handled::Fatal(e),
                PollError::Api(e) => Handled::Backoff(Backoff {
                    kind: "api",
                    base: Duration::from_secs(1),
                    cap: Duration::from_secs(4),
                    floor: Duration::ZERO,
                    retry_after: e.retry_after(),
                    hint: "",
                }),
                _ => Handled::Wait(Duration::from_secs(1)),
            }
        }
    }

    fn status(status: u16, retry_after: Option<u64>) -> Result<Next, PollError> {
        Err(PollError::Api(ApiError::Status {
            endpoint: "/v2/test".into(),
            status,
            message: "scripted".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }))
    }

    async fn play(outcomes: Vec<Result<Next, PollError>>) -> (Result<(), ApiError>, Vec<Duration>) {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let script = Script {
            outcomes: outcomes.into(),
            steps: steps.clone(),
            done: cancel.clone(),
        };
        let start = Instant::now();
        let result = run(script, Arc::new(Health::default()), cancel).await;
        let at = steps.lock().unwrap().iter().map(|t| *t - start).collect();
        (result, at)
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_waits_as_told_backs_off_honouring_retry_after_and_jitters_up_only() {
        let (result, at) = play(vec![
            status(503, Some(30)),
            Ok(Next::Listed {
                items: 1,
                wait: Duration::from_secs(10),
            }),
            Ok(Next::Listed {
                items: 1,
                wait: Duration::ZERO,
            }),
            Ok(Next::Idle(Duration::from_secs(7))),
            status(500, None),
            status(500, None),
        ])
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(at.len(), 7, "{at:?}");
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(at[0], Duration::from_secs(5), "the first wait");
        // Retry-After 30 s is a lower bound (plus up to 10 % of its own), then our jitter.
        assert!(
            gaps[0] >= Duration::from_secs(30) && gaps[0] <= Duration::from_secs(37),
            "{gaps:?}"
        );
        let s = |n: u64| Duration::from_secs(n);
        assert!(gaps[1] >= s(10) && gaps[1] <= s(11), "{gaps:?}");
        assert_eq!(gaps[2], Duration::ZERO, "a backlog page goes at once");
        assert_eq!(gaps[3], s(7), "an idle wait has no jitter");
        // A plain failure backs off from `base` (half fixed, half random), doubling.
        assert!(
            gaps[4] >= s(1) / 2 && gaps[4] <= s(1).mul_f64(1.1),
            "{gaps:?}"
        );
        assert!(gaps[5] >= s(1) && gaps[5] <= s(2).mul_f64(1.1), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_failure_stops_the_runner_with_its_error() {
        let (result, at) = play(vec![status(401, None)]).await;
        assert!(matches!(result, Err(e) if e.is_auth()));
        assert_eq!(at.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_runner_at_its_wait() {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let script = Script {
            outcomes: VecDeque::new(),
            steps: steps.clone(),
            done: CancellationToken::new(),
        };
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.cancel();
        });
        let result = run(script, Arc::new(Health::default()), cancel).await;
        assert!(result.is_ok());
        assert!(
            steps.lock().unwrap().is_empty(),
            "cancelled before the first step"
        );
    }
}
