//! Liveness and readiness, shared by the tasks, the HTTP endpoints and systemd.
//!
//! * Tasks report successful polls ([`Health::poll_succeeded`]); `/readyz` and systemd's
//!   `READY=1` depend on them.
//! * The PuLL loop *promises* to come back before a deadline each time it sleeps or sends a
//!   request ([`Health::promise`]). The systemd watchdog is fed only while that promise holds,
//!   so a wedged loop (not merely a live runtime) gets the service restarted.
//! * [`supervise`] refreshes the gauges and sends `STATUS=` and `WATCHDOG=1`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::Client;
use crate::model::now_ms;
use crate::state::Store;
use crate::state::prelude::*;

#[derive(Debug)]
pub struct Health {
    last_success_ms: AtomicI64,
    /// The PuLL loop checks in before this (unix ms); 0 = no promise (loop not running).
    deadline_ms: AtomicI64,
    contacted: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    files: AtomicI64,
    paused: AtomicBool,
    /// Woken whenever an item lands (the hook runner waits on it).
    landed_signal: tokio::sync::Notify,
    /// The jmafile PuLL streams, by name: readiness needs every one of them working.
    streams: Mutex<std::collections::BTreeMap<String, StreamHealth>>,
    /// What the account's contract covers, per list source (a jmafile stream, an archive
    /// classification), as its answers tell.
    contracts: Mutex<Contracts>,
    /// Woken whenever a source's contract outcome changes.
    contracts_changed: tokio::sync::Notify,
    /// The cluster roles this node takes part in (see `cluster`): whether it leads each, and
    /// whether any node does. Empty until the first lease attempt.
    roles: Mutex<std::collections::BTreeMap<String, RoleHealth>>,
}

/// One role as this node last saw it in the store.
#[derive(Debug, Clone, Default)]
struct RoleHealth {
    leading: bool,
    /// The node holding a live lease on it, if any.
    leader: Option<String>,
}

/// Contract outcomes per list source. A source is `Unknown` until its first answer.
#[derive(Debug, Default)]
struct Contracts {
    expected: std::collections::BTreeSet<String>,
    covered: std::collections::BTreeSet<String>,
    /// Source → the API's message, while it answers 402.
    refused: std::collections::BTreeMap<String, String>,
}

/// One PuLL stream's part in readiness and the watchdog.
#[derive(Debug, Clone, Default)]
struct StreamHealth {
    /// Last successful poll (unix ms); 0 = none yet.
    last_ok_ms: i64,
    /// Its list call is refused for a reason retrying will not fix (a bad `type`).
    refused: Option<String>,
    /// The stream's loop checks in before this (unix ms); 0 = no promise.
    deadline_ms: i64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            last_success_ms: AtomicI64::new(0),
            deadline_ms: AtomicI64::new(0),
            contacted: watch::channel(false).0,
            last_error: Mutex::new(None),
            files: AtomicI64::new(0),
            paused: AtomicBool::new(false),
            landed_signal: tokio::sync::Notify::new(),
            streams: Mutex::new(Default::default()),
            contracts: Mutex::new(Default::default()),
            contracts_changed: tokio::sync::Notify::new(),
            roles: Mutex::new(Default::default()),
        }
    }
}

impl Health {
    /// A poll (or archive check) got a good answer from the API.
    pub fn poll_succeeded(&self, task: &'static str) {
        let now = now_ms();
        self.last_success_ms.store(now, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.contacted.send_replace(true);
        metrics::gauge!(crate::metric::LAST_SUCCESS, "task" => task).set(now as f64 / 1000.0);
    }

    pub fn poll_failed(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
    }

    /// The caller will check in again within `within` (it is about to sleep or wait).
    pub fn promise(&self, within: Duration) {
        self.deadline_ms
            .store(now_ms() + within.as_millis() as i64, Ordering::Relaxed);
    }

    /// False when a promise was made and broken: the loop (or one stream's loop) is stuck.
    pub fn alive(&self) -> bool {
        let d = self.deadline_ms.load(Ordering::Relaxed);
        let now = now_ms();
        (d == 0 || now <= d)
            && self
                .streams()
                .values()
                .all(|s| s.deadline_ms == 0 || now <= s.deadline_ms)
    }

    fn streams(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, StreamHealth>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A PuLL stream that readiness waits for (registered before its loop starts).
    pub fn register_stream(&self, name: &str) {
        self.streams().entry(name.to_owned()).or_default();
    }

    /// A stream's loop will check in again within `within` (feeds the watchdog).
    pub fn promise_for(&self, name: &str, within: Duration) {
        self.promise(within);
        self.streams()
            .entry(name.to_owned())
            .or_default()
            .deadline_ms = now_ms() + within.as_millis() as i64;
    }

    pub fn stream_succeeded(&self, name: &str) {
        let mut streams = self.streams();
        let s = streams.entry(name.to_owned()).or_default();
        s.last_ok_ms = now_ms();
        s.refused = None;
    }

    /// The stream's list call is refused for a reason retrying will not fix: readiness fails
    /// with `reason` until the stream succeeds again.
    pub fn stream_refused(&self, name: &str, reason: &str) {
        self.streams().entry(name.to_owned()).or_default().refused = Some(reason.to_owned());
    }

    /// Why the PuLL streams are not ready, if they are not: one is refused, has not succeeded
    /// yet, or last succeeded longer than `staleness` ago.
    pub fn streams_not_ready(&self, staleness: Duration) -> Option<String> {
        let now = now_ms();
        let streams = self.streams();
        // A refusal says what to fix: it comes first.
        if let Some(reason) = streams.values().find_map(|s| s.refused.clone()) {
            return Some(reason);
        }
        for (name, s) in streams.iter() {
            if s.last_ok_ms == 0 {
                return Some(format!("stream {name}: no successful poll yet"));
            }
            let ago = now - s.last_ok_ms;
            if ago > staleness.as_millis() as i64 {
                return Some(format!(
                    "stream {name}: last successful poll {}s ago (server.ready_staleness is {}s)",
                    ago / 1000,
                    staleness.as_secs()
                ));
            }
        }
        None
    }

    fn contracts(&self) -> std::sync::MutexGuard<'_, Contracts> {
        self.contracts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A list source whose first answer decides, with the others', whether the daemon can do
    /// anything at all (registered before its loop starts).
    pub fn expect_contract(&self, source: &str) {
        self.contracts().expected.insert(source.to_owned());
    }

    /// The source got an answer other than 402: its contract is fine.
    pub fn contract_covered(&self, source: &str) {
        let mut c = self.contracts();
        let changed = c.refused.remove(source).is_some() | c.covered.insert(source.to_owned());
        drop(c);
        if changed {
            self.contracts_changed.notify_waiters();
        }
    }

    /// The source answered 402 `No contract.`: readiness fails with `message` until it is
    /// covered again.
    pub fn contract_refused(&self, source: &str, message: &str) {
        self.contracts()
            .refused
            .insert(source.to_owned(), message.to_owned());
        self.contracts_changed.notify_waiters();
    }

    /// Why the daemon is not ready for lack of a contract, if a source is refused.
    pub fn contract_not_ready(&self) -> Option<String> {
        let c = self.contracts();
        let (source, message) = c.refused.iter().next()?;
        Some(format!(
            "{source}: no contract ({message}); the account's contract does not cover it. \
             Retried every {} minutes",
            crate::poll::NO_CONTRACT_RETRY.as_secs() / 60
        ))
    }

    /// Resolves, with every source and its message, only if each expected source's first
    /// answer was a refusal before any was covered: the daemon has nothing it may do. Pends
    /// forever otherwise (or when nothing is expected).
    pub async fn refused_everywhere(&self) -> Vec<(String, String)> {
        loop {
            let changed = self.contracts_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.refused_verdict() {
                Some(Some(refusals)) => return refusals,
                Some(None) => return std::future::pending().await,
                None => changed.await,
            }
        }
    }

    /// `Some(Some(refusals))`: every expected source refused, none covered; `Some(None)`: that
    /// can no longer happen; `None`: not decided yet.
    #[allow(clippy::option_option)]
    fn refused_verdict(&self) -> Option<Option<Vec<(String, String)>>> {
        let c = self.contracts();
        if !c.covered.is_empty() || c.expected.is_empty() {
            return Some(None);
        }
        c.expected
            .iter()
            .all(|s| c.refused.contains_key(s))
            .then(|| {
                Some(
                    c.refused
                        .iter()
                        .map(|(s, m)| (s.clone(), m.clone()))
                        .collect(),
                )
            })
    }

    fn roles(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, RoleHealth>> {
        self.roles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the last lease attempt on `role` showed: whether this node leads it, and who does.
    /// A node that leads none of its roles while each has a leader is a ready standby.
    pub fn set_role(&self, role: &str, leading: bool, leader: Option<String>) {
        let was_leading = {
            let mut roles = self.roles();
            let r = roles.entry(role.to_owned()).or_default();
            let was = r.leading;
            *r = RoleHealth { leading, leader };
            was
        };
        if was_leading && !leading {
            // Its poller stopped: the promises it made are void, and a standby's watchdog must
            // not starve on them.
            self.deadline_ms.store(0, Ordering::Relaxed);
            if role == crate::cluster::ROLE_JMAFILE {
                for s in self.streams().values_mut() {
                    s.deadline_ms = 0;
                }
            }
        }
        let roles = self.roles();
        if !roles.is_empty() && roles.values().all(|r| !r.leading && r.leader.is_some()) {
            drop(roles);
            self.assume_contacted();
        }
    }

    /// True unless this node is a standby for `role` (also true before any lease attempt, and
    /// for a role nobody contends for).
    pub fn leads(&self, role: &str) -> bool {
        self.roles().get(role).is_none_or(|r| r.leading)
    }

    /// True if this node leads at least one role (or takes part in none).
    pub fn leads_any(&self) -> bool {
        let roles = self.roles();
        roles.is_empty() || roles.values().any(|r| r.leading)
    }

    /// Why the cluster is not ready, if a role has no live leader.
    pub fn cluster_not_ready(&self) -> Option<String> {
        let roles = self.roles();
        let (role, _) = roles.iter().find(|(_, r)| r.leader.is_none())?;
        Some(format!(
            "no node holds a live lease on {role} (nodes may be starting, or cannot reach the database)"
        ))
    }

    /// `leader of jmafile: node-a; standby for archive (leader node-b)` for `status` lines.
    pub fn roles_line(&self) -> String {
        self.roles()
            .iter()
            .map(|(role, r)| match (&r.leader, r.leading) {
                (_, true) => format!("leading {role}"),
                (Some(l), false) => format!("standby for {role} (leader {l})"),
                (None, false) => format!("{role}: no leader"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn last_success_ms(&self) -> Option<i64> {
        Some(self.last_success_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Marks the service contacted without a poll (no list task enabled).
    pub fn assume_contacted(&self) {
        self.contacted.send_replace(true);
    }

    /// Resolves once the first poll has succeeded.
    pub async fn contacted(&self) {
        let mut rx = self.contacted.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn set_files(&self, n: i64) {
        self.files.store(n, Ordering::Relaxed);
        metrics::gauge!(crate::metric::FILES).set(n as f64);
    }

    pub fn landed(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::metric::FILES).set(n as f64);
        self.landed_signal.notify_waiters();
    }

    /// Resolves at the next landing (register with `enable` before checking for work).
    pub fn landing(&self) -> tokio::sync::futures::Notified<'_> {
        self.landed_signal.notified()
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        metrics::gauge!(crate::metric::DOWNLOADS_PAUSED).set(if paused { 1.0 } else { 0.0 });
    }

    /// One line for `systemctl status` (`STATUS=`).
    pub fn status_line(&self, queued: i64) -> String {
        let files = self.files.load(Ordering::Relaxed);
        let since = |ms: i64| {
            humantime::format_duration(Duration::from_secs(((now_ms() - ms).max(0) / 1000) as u64))
        };
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let paused = if self.paused.load(Ordering::Relaxed) {
            "; downloads paused"
        } else {
            ""
        };
        match (self.last_success_ms(), error) {
            (_, Some(e)) => format!(
                "polling fails: {}; {files} files, {queued} queued{paused}",
                e.chars().take(120).collect::<String>()
            ),
            (Some(t), None) => format!(
                "polling; {files} files, {queued} queued; last poll {} ago{paused}",
                since(t)
            ),
            (None, None) => format!("starting; {files} files, {queued} queued"),
        }
    }
}

/// How often gauges and systemd's status are refreshed (the watchdog may ask for more).
const REFRESH: Duration = Duration::from_secs(10);

/// Keeps the gauges, `STATUS=` and the watchdog going until `cancel`, and sends `READY=1`
/// once the first poll succeeded, in one message with a `STATUS=` computed at that moment:
/// `systemctl status` must not show "starting" for another [`REFRESH`] after the unit is up.
pub async fn supervise(
    health: Arc<Health>,
    store: Store,
    client: Arc<Client>,
    cancel: CancellationToken,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(REFRESH, |w| (w / 2).min(REFRESH));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_status = String::new();
    let mut last_refresh: Option<tokio::time::Instant> = None;
    let mut ready = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = health.contacted(), if !ready => {
                ready = true;
                last_refresh = Some(tokio::time::Instant::now());
                last_status = refresh(&health, &store, &client).await;
                tracing::info!(event = "ready", status = %last_status, "first poll succeeded; ready");
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&last_status),
                ]);
                continue;
            }
            _ = tick.tick() => {}
        }
        if watchdog.is_some() && health.alive() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        if last_refresh.is_some_and(|t| t.elapsed() < REFRESH) {
            continue;
        }
        last_refresh = Some(tokio::time::Instant::now());
        let status = refresh(&health, &store, &client).await;
        if status != last_status {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
            last_status = status;
        }
    }
}

/// Refreshes the gauges (queue depth, budgets) and returns the `STATUS=` line.
async fn refresh(health: &Health, store: &Store, client: &Client) -> String {
    let queued = match store.queue_depth().await {
        Ok(rows) => {
            let mut total = 0;
            for (source, n) in rows {
                metrics::gauge!(crate::metric::QUEUE_DEPTH, "source" => source).set(n as f64);
                total += n;
            }
            total
        }
        Err(_) => 0,
    };
    for budget in [client.data_budget(), client.api_budget()] {
        if let Some(left) = budget.remaining() {
            metrics::gauge!(crate::metric::BUDGET_REMAINING, "budget" => budget.name())
                .set(left as f64);
        }
    }
    crate::telemetry::metrics().run_upkeep();
    health.status_line(queued)
}
