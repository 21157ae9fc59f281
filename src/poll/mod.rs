//! Scheduler tasks that list new items and hand them to the downloader through SQLite.
//! Each exposes a step (`poll_once`) that tests drive directly, and a thin `run` loop that only
//! waits, backs off and watches for shutdown.

pub mod archive;
pub mod jmafile;
pub mod streams;

use std::time::Duration;

use crate::state::{NewItem, Source, now_ms};

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

/// Logs a failing task once per change of state instead of once per attempt, with a reminder
/// every `REMIND` while it lasts, so a long outage does not flood the log.
#[derive(Debug, Default)]
pub struct FailureLog {
    pub consecutive: u32,
    last_kind: Option<String>,
    last_logged: Option<tokio::time::Instant>,
}

const REMIND: Duration = Duration::from_secs(600);

impl FailureLog {
    /// Counts a failure; true when it should be logged at warn/error level.
    pub fn failed(&mut self, kind: &str) -> bool {
        self.consecutive += 1;
        let now = tokio::time::Instant::now();
        let changed = self.last_kind.as_deref() != Some(kind);
        let due = self.last_logged.is_none_or(|t| now - t >= REMIND);
        self.last_kind = Some(kind.to_owned());
        if changed || due {
            self.last_logged = Some(now);
            true
        } else {
            false
        }
    }

    /// Clears the failure state; returns how many failures preceded this success.
    pub fn recovered(&mut self) -> u32 {
        let n = self.consecutive;
        *self = FailureLog::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_are_logged_on_change_and_reminded_every_ten_minutes() {
        let mut log = FailureLog::default();
        assert!(log.failed("api"), "the first failure is logged");
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(!log.failed("api"), "repeats within 10 minutes are not");
        }
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(log.failed("api"), "a reminder after 10 minutes");
        assert!(log.failed("auth"), "a different failure is logged at once");
        assert_eq!(log.recovered(), 103);
        assert!(log.failed("auth"), "after recovery, a failure is new again");
    }
}
