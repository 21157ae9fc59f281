//! Request budgets. The provider allows about 50 body downloads per 5 minutes per data host and
//! 2000 list calls per 10 minutes, and asks clients to avoid bursts. A [`Budget`] enforces two
//! rules at once:
//!
//! * a strict sliding window: never more than `requests` grants in any `window`, whatever the
//!   timing (a plain token bucket would allow up to twice that across a window boundary);
//! * even pacing (GCRA): after `burst` back-to-back grants, one grant every `window / requests`,
//!   so a backlog is spread over the window instead of arriving as one burst.
//!
//! A grant is a [`Permit`]: dropping it unused (no request was sent) gives the slot back.
//!
//! The limits are the account's, not one process's: with a [`Ledger`] shared (the state
//! store's request ledger, which every node of a cluster books in), a local grant is only good
//! once the ledger also has room, so N nodes together never exceed the window. A booking is
//! never given back (a permit dropped unused after booking costs one slot of the window): the
//! ledger errs on the side of fewer requests.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::model::now_ms;
use crate::state::ClusterStore;

/// Bookings every node of the account sees.
pub trait Ledger: std::fmt::Debug + Send + Sync + 'static {
    /// Books one request on `budget` if fewer than `limit` were booked in the last `window`;
    /// otherwise says when (unix ms) to ask again.
    fn book<'a>(
        &'a self,
        budget: &'a str,
        window: Duration,
        limit: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Option<i64>, String>> + Send + 'a>>;
}

impl<S: ClusterStore + std::fmt::Debug + Send + Sync + 'static> Ledger for S {
    fn book<'a>(
        &'a self,
        budget: &'a str,
        window: Duration,
        limit: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Option<i64>, String>> + Send + 'a>> {
        Box::pin(async move {
            self.book_request(
                budget,
                now_ms(),
                window.as_millis() as i64,
                i64::from(limit),
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}

/// How long to wait before booking again after the ledger could not be reached.
const LEDGER_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Limit {
    requests: u32,
    window: Duration,
    /// GCRA emission interval: window / requests.
    interval: Duration,
    /// GCRA tolerance: (burst - 1) * interval.
    tolerance: Duration,
}

#[derive(Debug)]
struct State {
    /// Grant times within the last window (at most `requests` of them).
    log: VecDeque<Instant>,
    /// GCRA theoretical arrival time.
    tat: Instant,
    /// The latest grant let go after its booking in the shared ledger, and when: bookings take
    /// variable time, and the grants after a slow one keep their spacing behind it instead of
    /// bunching up (the pace is kept, a burst stays a burst).
    released: Option<(Instant, Instant)>,
    /// Set after a 429 so nobody sends until the upstream's Retry-After has passed.
    paused_until: Option<Instant>,
    granted_total: u64,
}

#[derive(Debug)]
pub struct Budget {
    name: &'static str,
    limit: Option<Limit>,
    state: Mutex<State>,
    /// The account-wide bookings, once the state store is open.
    ledger: OnceLock<Arc<dyn Ledger>>,
    /// The ledger could not be reached last time (its error is logged once, not every retry).
    ledger_failing: std::sync::atomic::AtomicBool,
}

impl Budget {
    /// `requests == 0` means unlimited (benchmarks, or an operator's explicit choice).
    pub fn new(name: &'static str, requests: u32, window: Duration, burst: u32) -> Budget {
        let limit = (requests > 0 && !window.is_zero()).then(|| {
            // Our clock is not the server's: a request granted at the window's edge can arrive
            // late (a busy host, a lost SYN retransmitted after 1 s), and one granted at its
            // start early. The margin keeps the server's count within the limit too: 7 s on a
            // 5-minute window, 2% of the rate.
            let window = window + window / 50 + Duration::from_secs(1);
            let interval = window / requests;
            Limit {
                requests,
                window,
                interval,
                tolerance: interval * burst.clamp(1, requests).saturating_sub(1),
            }
        });
        Budget {
            name,
            limit,
            state: Mutex::new(State {
                log: VecDeque::new(),
                tat: Instant::now(),
                released: None,
                paused_until: None,
                granted_total: 0,
            }),
            ledger: OnceLock::new(),
            ledger_failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes every grant also book in `ledger`, shared by all nodes of the account. Once only.
    pub fn share(&self, ledger: Arc<dyn Ledger>) {
        let _ = self.ledger.set(ledger);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (plain fields),
        // so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants now, or says when to try again.
    fn try_grant(&self, now: Instant) -> Result<Instant, Instant> {
        let mut st = self.lock();
        if let Some(until) = st.paused_until {
            if now < until {
                return Err(until);
            }
            st.paused_until = None;
        }
        if let Some(l) = self.limit {
            while st.log.front().is_some_and(|t| *t + l.window <= now) {
                st.log.pop_front();
            }
            if st.log.len() >= l.requests as usize {
                let frees_at = st.log[st.log.len() - l.requests as usize] + l.window;
                // Time spent blocked by the window must not bank pacing credit, or the grants
                // would come as a burst when it frees; resume at the even pace instead.
                st.tat = st.tat.max(frees_at + l.tolerance);
                return Err(frees_at);
            }
            let earliest = st.tat.checked_sub(l.tolerance).unwrap_or(now);
            if now < earliest {
                return Err(earliest);
            }
            st.tat = st.tat.max(now) + l.interval;
            st.log.push_back(now);
        }
        st.granted_total += 1;
        Ok(now)
    }

    /// Waits until a request may be sent. Cancel-safe: dropping the future grants nothing
    /// here (a booking already made in the ledger stays booked).
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            match self.try_grant(Instant::now()) {
                Ok(at) => {
                    let permit = Permit {
                        budget: self,
                        at,
                        sent: false,
                    };
                    match self.book(&permit).await {
                        None => {
                            self.pace_release(at).await;
                            return permit;
                        }
                        // Dropping the permit gives the local grant back.
                        Some(retry_at) => {
                            drop(permit);
                            tokio::time::sleep_until(retry_at).await;
                        }
                    }
                }
                Err(retry_at) => tokio::time::sleep_until(retry_at).await,
            }
        }
    }

    /// After a booking: lets the grant made at `granted` go no sooner after the previous one
    /// than it was granted after it (a no-op without a shared ledger).
    ///
    /// Only a limited budget with a ledger is paced here (an unlimited one books nothing), and
    /// the hold-back is capped at one pacing interval, so delays can never pile up from one
    /// grant to the next.
    async fn pace_release(&self, granted: Instant) {
        let (Some(_), Some(l)) = (self.ledger.get(), self.limit) else {
            return;
        };
        loop {
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                let earliest =
                    |prev: Instant, at: Instant| (at + (granted - prev)).min(granted + l.interval);
                match st.released {
                    Some((prev, at)) if granted > prev && now < earliest(prev, at) => {
                        earliest(prev, at)
                    }
                    Some((prev, _)) if granted <= prev => return,
                    _ => {
                        st.released = Some((granted, now));
                        return;
                    }
                }
            };
            tokio::time::sleep_until(wait).await;
        }
    }

    /// Books a local grant in the shared ledger: None when booked (or nothing is shared),
    /// else when to try again.
    async fn book(&self, _permit: &Permit<'_>) -> Option<Instant> {
        let (Some(ledger), Some(l)) = (self.ledger.get(), self.limit) else {
            return None;
        };
        let booked = ledger.book(self.name, l.window, l.requests).await;
        let was_failing = self
            .ledger_failing
            .swap(booked.is_err(), std::sync::atomic::Ordering::Relaxed);
        if was_failing && booked.is_ok() {
            tracing::info!(
                event = "budget_ledger_ok",
                budget = self.name,
                "the account's {} budget can be booked again",
                self.name
            );
        }
        match booked {
            Ok(None) => None,
            Ok(Some(free_ms)) => {
                let wait = Duration::from_millis((free_ms - now_ms()).clamp(1, 3_600_000) as u64);
                Some(Instant::now() + wait)
            }
            Err(_) if was_failing => Some(Instant::now() + LEDGER_RETRY),
            Err(e) => {
                warn!(
                    event = "budget_ledger_error",
                    budget = self.name,
                    error = %e,
                    "cannot book a request on the account's {} budget in the state store: {e}; no request goes out until it can (retrying every {}s)",
                    self.name,
                    LEDGER_RETRY.as_secs()
                );
                Some(Instant::now() + LEDGER_RETRY)
            }
        }
    }

    fn refund(&self, at: Instant) {
        let mut st = self.lock();
        if let Some(l) = self.limit
            && let Some(pos) = st.log.iter().rposition(|t| *t == at)
        {
            st.log.remove(pos);
            st.tat = st.tat.checked_sub(l.interval).unwrap_or(st.tat).max(at);
        }
        st.granted_total = st.granted_total.saturating_sub(1);
    }

    /// Stops all grants until `until` (after a 429 with Retry-After).
    pub fn pause_until(&self, until: Instant) {
        let mut st = self.lock();
        if st.paused_until.is_none_or(|p| p < until) {
            st.paused_until = Some(until);
        }
    }

    /// Replays requests made before a restart (their ages), so a crash loop cannot exceed the
    /// budget.
    pub fn restore(&self, ages: impl IntoIterator<Item = Duration>) {
        let Some(l) = self.limit else { return };
        let now = Instant::now();
        let mut times: Vec<Instant> = ages
            .into_iter()
            .filter(|a| *a < l.window)
            .filter_map(|a| now.checked_sub(a))
            .collect();
        times.sort();
        let mut st = self.lock();
        for t in times {
            st.tat = st.tat.max(t) + l.interval;
            st.log.push_back(t);
        }
        while st.log.len() > l.requests as usize {
            st.log.pop_front();
        }
    }

    /// Grants left in the current window, `None` when unlimited (for status and metrics).
    pub fn remaining(&self) -> Option<u32> {
        let l = self.limit?;
        let now = Instant::now();
        let st = self.lock();
        let used = st.log.iter().filter(|t| **t + l.window > now).count() as u32;
        Some(l.requests.saturating_sub(used))
    }

    pub fn granted_total(&self) -> u64 {
        self.lock().granted_total
    }
}

/// The right to send one request. Call [`Permit::sent`] when the request goes out; a permit
/// dropped before that is refunded.
#[derive(Debug)]
pub struct Permit<'a> {
    budget: &'a Budget,
    at: Instant,
    sent: bool,
}

impl Permit<'_> {
    pub fn sent(mut self) {
        self.sent = true;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.budget.refund(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants `n` permits as fast as the budget allows and returns their times, relative to start.
    async fn grant_times(b: &Budget, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            b.acquire().await.sent();
            out.push(Instant::now() - start);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_in_any_window_and_paced_after_the_burst() {
        let b = Budget::new("data", 50, Duration::from_secs(300), 10);
        let times = grant_times(&b, 160).await;
        // Burst of 10 at once, then one every 6.14 s (window plus margin, over 50).
        let interval = Duration::from_millis(307_000) / 50;
        assert!(times[..10].iter().all(|t| *t == Duration::ZERO));
        assert_eq!(times[10], interval);
        for w in times[10..50].windows(2) {
            assert_eq!(w[1] - w[0], interval, "{w:?}");
        }
        // After the first burst, never two at once: the pace stays even, also when the window
        // frees; and the long-run rate is 50 per window.
        for w in times[10..].windows(2) {
            assert!(w[1] - w[0] >= interval, "{w:?}");
        }
        assert!(*times.last().unwrap() >= interval * (160 - 50));
        // Sliding-window check over every grant.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(300))
                .count();
            assert!(
                in_window <= 50,
                "{in_window} grants in the window from {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unsent_permits_are_refunded() {
        let b = Budget::new("data", 2, Duration::from_secs(60), 2);
        drop(b.acquire().await);
        drop(b.acquire().await);
        assert_eq!(b.remaining(), Some(2));
        let times = grant_times(&b, 2).await;
        assert_eq!(times, vec![Duration::ZERO, Duration::ZERO]);
        assert_eq!(b.remaining(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_and_restore_hold_back_grants() {
        let b = Budget::new("data", 3, Duration::from_secs(60), 3);
        b.restore([
            Duration::from_secs(10),
            Duration::from_secs(20),
            Duration::from_secs(30),
        ]);
        assert_eq!(b.remaining(), Some(0));
        let times = grant_times(&b, 1).await;
        // The oldest restored request (30 s ago) leaves the window (60 s + 2.2 s margin)
        // after 32.2 s.
        assert_eq!(times, vec![Duration::from_millis(32_200)]);

        let b = Budget::new("api", 0, Duration::from_secs(1), 1);
        b.pause_until(Instant::now() + Duration::from_secs(7));
        assert_eq!(grant_times(&b, 1).await, vec![Duration::from_secs(7)]);
        assert_eq!(b.remaining(), None);
    }

    /// Two nodes' budgets on one store: each would grant 3 per window on its own, together
    /// they grant 3, and the rest wait for the shared window to free.
    #[tokio::test]
    async fn nodes_sharing_a_ledger_keep_one_account_budget() {
        use crate::model::NodeId;
        use crate::state::StateStore;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::state::sqlite::SqliteStore::open(&dir.path().join("s.sqlite"))
            .await
            .unwrap();
        // A 1-s window (2.02 s with the margin), 3 requests, no burst limit.
        let window = Duration::from_secs(1);
        let nodes: Vec<Arc<Budget>> = ["a", "b"]
            .iter()
            .map(|n| {
                let b = Budget::new("data", 3, window, 3);
                b.share(Arc::new(store.for_node(NodeId((*n).into()))));
                Arc::new(b)
            })
            .collect();
        let start = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for b in &nodes {
            let b = b.clone();
            tasks.spawn(async move {
                let mut at = Vec::new();
                for _ in 0..3 {
                    b.acquire().await.sent();
                    at.push(start.elapsed());
                }
                at
            });
        }
        let mut times = Vec::new();
        while let Some(t) = tasks.join_next().await {
            times.extend(t.unwrap());
        }
        times.sort();
        assert_eq!(times.len(), 6);
        // Judged on the provider's window: the budget's margin is what absorbs the time a
        // booking's commit takes before the request goes out.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + window).count();
            assert!(
                in_window <= 3,
                "{in_window} grants in the window from {t:?}: {times:?}"
            );
        }
        store.close().await;
    }
}
