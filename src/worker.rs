//! What every background task shares: failure logs that do not flood the journal while an
//! outage lasts.

use std::time::Duration;

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
