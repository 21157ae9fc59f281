//! Freshness per (source, classification): when the newest item landed, its own receivedTime,
//! the usual gap between arrivals, and whether the classification is late.
//!
//! The state keeps one row per data identifier (migration 4's trigger, in the transaction that
//! marks an item done), with a gap learned from successive receivedTimes. Here those rows are
//! folded into one line per classification, at each scrape or `status`: a few hundred rows,
//! never the items table.
//!
//! Rules, chosen so an operator can trust a "late" flag:
//! * the usual gap of an identifier is the learned one once two gaps were seen, the catalog's
//!   cadence until then (`catalog/dmdata-catalog.tsv`); an identifier the catalog calls
//!   irregular (typhoon-only products, corrections, "n/a") never makes its classification late;
//! * a classification's usual gap is the shortest among its regular identifiers that arrived in
//!   the last [`ACTIVE`] (a product discontinued long ago does not keep it late forever);
//! * it is late when now − the newest receivedTime > `monitor.late_factor` × that gap. The age
//!   is measured from receivedTime, not from landing, so a daemon that lags behind its backlog
//!   shows its classifications late too.
//! * archives come once a day; their receivedTime is the end of the JST day they cover.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::state::FreshnessRow;

/// An identifier silent for longer than this no longer sets its classification's usual gap.
pub const ACTIVE_MS: i64 = 7 * 86_400_000;

/// A day, in ms: an archive's cadence, and the span of its day.
const DAY_MS: i64 = 86_400_000;

/// Gaps learned before the learned value replaces the catalog's cadence.
const LEARNED_AFTER: i64 = 2;

/// One classification's freshness.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Freshness {
    pub source: String,
    pub classification: String,
    /// When the newest item landed (unix ms).
    pub last_landed_ms: i64,
    /// The newest item's own receivedTime (archives: the end of its JST day), unix ms.
    pub last_received_ms: i64,
    /// now − last_received_ms.
    pub age_ms: i64,
    /// The usual gap between arrivals; None for irregular data (never late).
    pub expected_interval_ms: Option<i64>,
    pub late: bool,
}

/// The usual gap of one identifier's row: None when irregular or not known yet.
fn row_interval(row: &FreshnessRow) -> Option<i64> {
    let learned = row.interval_ms.filter(|ms| *ms > 0);
    if row.source == "archive" {
        return Some(match learned {
            Some(ms) if row.samples >= LEARNED_AFTER => ms,
            _ => DAY_MS,
        });
    }
    let catalog = (!row.type_name.is_empty())
        .then(|| crate::catalog::get().exact(&row.type_name))
        .flatten();
    let seed = match catalog {
        // Known and irregular: never late, whatever arrived so far.
        Some((product, _)) => Some(product.every()?.as_millis() as i64),
        None => None,
    };
    match learned {
        Some(ms) if row.samples >= LEARNED_AFTER => Some(ms),
        other => seed.or(other),
    }
}

/// Folds identifier rows into one [`Freshness`] per (source, classification), sorted.
pub fn summarize(rows: &[FreshnessRow], now: i64, late_factor: f64) -> Vec<Freshness> {
    let mut out: BTreeMap<(&str, &str), Freshness> = BTreeMap::new();
    for row in rows {
        let received = if row.source == "archive" {
            row.last_received_ms + DAY_MS
        } else {
            row.last_received_ms
        };
        let entry = out
            .entry((row.source.as_str(), row.classification.as_str()))
            .or_insert_with(|| Freshness {
                source: row.source.clone(),
                classification: row.classification.clone(),
                last_landed_ms: row.last_landed_ms,
                last_received_ms: received,
                age_ms: 0,
                expected_interval_ms: None,
                late: false,
            });
        entry.last_landed_ms = entry.last_landed_ms.max(row.last_landed_ms);
        entry.last_received_ms = entry.last_received_ms.max(received);
        if now - received <= ACTIVE_MS
            && let Some(gap) = row_interval(row)
        {
            entry.expected_interval_ms =
                Some(entry.expected_interval_ms.map_or(gap, |g| g.min(gap)));
        }
    }
    out.into_values()
        .map(|mut f| {
            f.age_ms = (now - f.last_received_ms).max(0);
            f.late = f
                .expected_interval_ms
                .is_some_and(|gap| f.age_ms as f64 > late_factor * gap as f64);
            f
        })
        .collect()
}

/// Sets the freshness gauges (see the README's metrics table). An irregular classification has
/// no `jma_poller_expected_interval_seconds`.
pub fn publish(list: &[Freshness]) {
    for f in list {
        let labels = [
            ("source", f.source.clone()),
            ("classification", f.classification.clone()),
        ];
        metrics::gauge!(crate::metric::LAST_LANDED, &labels).set(f.last_landed_ms as f64 / 1000.0);
        metrics::gauge!(crate::metric::LAST_RECEIVED, &labels)
            .set(f.last_received_ms as f64 / 1000.0);
        if let Some(gap) = f.expected_interval_ms {
            metrics::gauge!(crate::metric::EXPECTED_INTERVAL, &labels).set(gap as f64 / 1000.0);
        }
        metrics::gauge!(crate::metric::CLASSIFICATION_LATE, &labels)
            .set(f64::from(u8::from(f.late)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        class: &str,
        type_name: &str,
        received: i64,
        interval: Option<i64>,
        samples: i64,
    ) -> FreshnessRow {
        FreshnessRow {
            source: "jmafile".into(),
            classification: class.into(),
            type_name: type_name.into(),
            last_landed_ms: received + 500,
            last_received_ms: received,
            interval_ms: interval,
            samples,
        }
    }

    const NOW: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    #[test]
    fn a_classification_is_late_past_factor_times_its_shortest_active_gap() {
        let rows = [
            // Learned 1-minute gap, silent for 4 minutes: late at factor 3.
            row("jmafile.a", "X_UNKNOWN_1", NOW - 4 * MIN, Some(MIN), 5),
            // A slow sibling that arrived recently does not hide it.
            row(
                "jmafile.a",
                "X_UNKNOWN_2",
                NOW - 10 * MIN,
                Some(60 * MIN),
                5,
            ),
            // Within 3 gaps: not late.
            row("jmafile.b", "X_UNKNOWN_3", NOW - 2 * MIN, Some(MIN), 5),
        ];
        let out = summarize(&rows, NOW, 3.0);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].classification, "jmafile.a");
        assert_eq!(out[0].expected_interval_ms, Some(MIN));
        assert_eq!(out[0].age_ms, 4 * MIN);
        assert!(out[0].late);
        assert!(!out[1].late);
        assert!(!summarize(&rows, NOW, 5.0)[0].late);
    }

    #[test]
    fn the_catalog_seeds_the_gap_and_irregular_products_are_never_late() {
        // Radar every 5 minutes per the catalog; nothing learned yet; 16 minutes old.
        let radar = row(
            "jmafile.rdr-nc5min",
            "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL",
            NOW - 16 * MIN,
            None,
            0,
        );
        let out = summarize(std::slice::from_ref(&radar), NOW, 3.0);
        assert_eq!(out[0].expected_interval_ms, Some(5 * MIN));
        assert!(out[0].late);
        // An identifier the catalog does not know and nothing learned: no gap, never late.
        let unknown = row("jmafile.x", "NOT_IN_THE_CATALOG", NOW - 1000 * MIN, None, 0);
        let out = summarize(&[unknown], NOW, 3.0);
        assert_eq!(out[0].expected_interval_ms, None);
        assert!(!out[0].late);
        // An irregular product (the catalog's cadence says so) is never late, even learned.
        let catalog = crate::catalog::get();
        let fill = crate::catalog::Fill {
            time: time::OffsetDateTime::from_unix_timestamp(NOW / 1000).unwrap(),
            seq: 1,
            count: 1,
            code: 1,
        };
        let (irregular, id) = catalog
            .pairs()
            .find_map(|(_, p)| {
                let id = p.fill(&fill);
                let (product, _) = catalog.exact(&id)?;
                product.every().is_none().then(|| (product.clone(), id))
            })
            .expect("the catalog has irregular products");
        let rows = [row(
            &irregular.classification,
            &id,
            NOW - 1000 * MIN,
            Some(MIN),
            9,
        )];
        let out = summarize(&rows, NOW, 3.0);
        assert_eq!(out[0].expected_interval_ms, None, "{}", irregular.cadence);
        assert!(!out[0].late);
    }

    #[test]
    fn archives_are_judged_by_the_end_of_their_day_and_a_daily_cadence() {
        let mut day = row("telegram.earthquake", "", NOW - 3 * DAY_MS, None, 0);
        day.source = "archive".into();
        let out = summarize(std::slice::from_ref(&day), NOW, 3.0);
        assert_eq!(out[0].last_received_ms, NOW - 2 * DAY_MS);
        assert_eq!(out[0].expected_interval_ms, Some(DAY_MS));
        assert!(!out[0].late);
        day.last_received_ms = NOW - 5 * DAY_MS;
        assert!(summarize(&[day], NOW, 3.0)[0].late);
    }
}
