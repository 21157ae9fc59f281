//! Retry delays. Kept as a pure function of the attempt number (rather than a stateful retry
//! wrapper) because download attempts are counted in SQLite and survive restarts.

use std::time::Duration;

/// Exponential delay for `attempt` (1-based) with "equal jitter": half of the delay is fixed,
/// half random, so retries grow predictably but many clients never retry in lockstep.
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)))
        .min(cap);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Upstream's `Retry-After` is a lower bound on our own delay; it is clamped to `cap` so a
/// "retry in a day" cannot stall the mirror, and gets up to 10 % jitter on top.
pub fn honour_retry_after(
    ours: Duration,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Duration {
    match retry_after {
        Some(ra) => {
            let ra = ra.min(cap);
            ours.max(ra + ra.mul_f64(fastrand::f64() * 0.1))
        }
        None => ours,
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 1..40 {
            let full = (base * 2u32.pow((attempt - 1).min(20))).min(cap);
            let d = delay(attempt, base, cap);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_clamped_lower_bound() {
        let d = honour_retry_after(
            Duration::from_secs(1),
            Some(Duration::from_secs(30)),
            Duration::from_secs(600),
        );
        assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(33));
        let d = honour_retry_after(
            Duration::from_secs(1),
            Some(Duration::from_secs(99_999)),
            Duration::from_secs(600),
        );
        assert!(d <= Duration::from_secs(660));
        assert_eq!(
            honour_retry_after(Duration::from_secs(5), None, Duration::from_secs(1)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn parses_both_retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let d = parse_retry_after(&soon).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
