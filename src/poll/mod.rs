//! List sources: they list new items and hand them to the downloader through the state store.
//! Each is a [`runner::Source`] (one step: one listing committed with its cursor; what its own
//! refusals mean) driven by the one loop in [`runner`], which owns the schedule, cancellation,
//! backoff with `Retry-After`, throttled failure logs, health, poll metrics and the jitter.
//! JmaFile PuLL ([`jmafile`], one runner per stream planned by [`streams`]) and daily archives
//! ([`archive`]) are the two sources; a third is one file here plus its config section.

pub mod archive;
pub mod jmafile;
pub mod runner;
pub mod streams;

use std::time::Duration;

/// How often a list source the contract does not cover (HTTP 402 `No contract.`) is asked
/// again: a contract can be added at any time, and asking more often would only add load.
pub const NO_CONTRACT_RETRY: Duration = Duration::from_secs(15 * 60);

use crate::api::ApiError;
use crate::model::{NewItem, Source, now_ms};
use crate::state::StoreError;

/// Why a step of a list source failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// HTTP 400 to a jmafile list call; `with_cursor` says whether it carried a cursorToken.
    #[error("{source}")]
    Refused {
        with_cursor: bool,
        #[source]
        source: ApiError,
    },
}

/// A list entry that did not parse but has an id: recorded as failed with the reason, so it is
/// visible in `status` and never fetched. Its fields are whatever could be read.
pub(crate) fn malformed_entry(
    source: Source,
    id: String,
    serial: Option<u64>,
    raw: &serde_json::Value,
    reason: &str,
) -> NewItem {
    let text = |key: &str| raw.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    NewItem {
        source,
        id,
        serial,
        classification: text("classification").unwrap_or_else(|| "unknown".into()),
        // No usable time: age it from now (for retention).
        received_ms: Some(now_ms()),
        url: text("url").unwrap_or_default(),
        plan: None,
        path: None,
        refused: Some(format!("malformed list entry: {reason}")),
        type_name: None,
    }
}

/// Spaces calls at least `gap` apart, first come first served: each caller reserves the next
/// free slot and sleeps until it, so no caller can starve the others (a stream paging a
/// backlog gets every other slot at most, while the rest still get theirs in turn). A slot
/// reserved by a caller that is then cancelled is simply left unused.
#[derive(Debug)]
pub struct Pacer {
    gap: Duration,
    next: std::sync::Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    /// The next free slot.
    next: Option<tokio::time::Instant>,
    /// When the last caller was actually let through.
    released: Option<tokio::time::Instant>,
}

impl Pacer {
    pub fn new(gap: Duration) -> Pacer {
        Pacer {
            gap,
            next: std::sync::Mutex::new(Slots::default()),
        }
    }

    /// Waits for this caller's slot, and at least `gap` after the caller let through before
    /// it: a caller woken late (a busy host) pushes the ones after it back instead of letting
    /// them bunch up behind it.
    pub async fn wait(&self) {
        let slot = {
            let mut slots = self.slots();
            let now = tokio::time::Instant::now();
            let slot = slots.next.map_or(now, |n| n.max(now));
            slots.next = Some(slot + self.gap);
            slot
        };
        tokio::time::sleep_until(slot).await;
        loop {
            let earliest = {
                let mut slots = self.slots();
                let now = tokio::time::Instant::now();
                match slots.released.map(|r| r + self.gap) {
                    Some(earliest) if now < earliest => earliest,
                    _ => {
                        slots.released = Some(now);
                        slots.next = Some(slots.next.map_or(now, |n| n.max(now)));
                        return;
                    }
                }
            };
            tokio::time::sleep_until(earliest).await;
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Plain data under the lock: a poisoned lock is still consistent.
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub use crate::worker::FailureLog;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_calls_in_the_order_they_came() {
        let pacer = std::sync::Arc::new(Pacer::new(Duration::from_millis(600)));
        let start = tokio::time::Instant::now();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5u32 {
            let (p, o) = (pacer.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                // Callers arrive in order, 1 ms apart.
                tokio::time::sleep(Duration::from_millis(u64::from(i))).await;
                p.wait().await;
                o.lock().unwrap().push((i, start.elapsed()));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got = order.lock().unwrap().clone();
        let ids: Vec<u32> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4], "first come, first served");
        for w in got.windows(2) {
            assert!(w[1].1 - w[0].1 >= Duration::from_millis(600), "{got:?}");
        }
        // After a pause, the next caller goes at once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = tokio::time::Instant::now();
        pacer.wait().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
