//! `status`: cursors, counts, freshness, waits and recent errors, read-only.

use std::time::Duration;

use super::Failure;
use crate::config::Settings;
use crate::model::now_ms;
use crate::state::Store;
use crate::state::prelude::*;

/// The freshness table: per classification, last landed, age of the newest item, usual gap,
/// and "LATE" past `monitor.late_factor` × the gap.
fn print_freshness(list: &[crate::freshness::Freshness], late_factor: f64) {
    if list.is_empty() {
        return;
    }
    println!("freshness (late: nothing newer for more than {late_factor} x the usual gap):");
    println!(
        "  {:<8} {:<36} {:>14} {:>12} {:>10}  state",
        "source", "classification", "last landed", "age", "usual gap"
    );
    let span = |ms: i64| {
        humantime::format_duration(Duration::from_secs((ms.max(0) / 1000) as u64)).to_string()
    };
    for f in list {
        println!(
            "  {:<8} {:<36} {:>14} {:>12} {:>10}  {}",
            f.source,
            f.classification,
            format!("{} ago", span(now_ms() - f.last_landed_ms)),
            span(f.age_ms),
            f.expected_interval_ms.map_or("irregular".into(), span),
            if f.late {
                "LATE"
            } else if f.expected_interval_ms.is_none() {
                "-"
            } else {
                "ok"
            }
        );
    }
}

/// The ids held back before their next request (download.refetch_delay, or a same-id block
/// from the data host), soonest first.
fn print_waiting(waiting: &crate::state::Waiting) {
    if waiting.counts.is_empty() {
        return;
    }
    let parts: Vec<String> = waiting
        .counts
        .iter()
        .map(|c| format!("{} on {}", c.items, c.reason.as_str()))
        .collect();
    println!("waiting before the next request: {}", parts.join(", "));
    for w in &waiting.items {
        println!(
            "  {} {} serial {} [{}] {}: due {}",
            w.source,
            w.id,
            w.serial.map_or("-".into(), |s| s.to_string()),
            w.classification,
            w.reason.as_str(),
            due(w.due_ms)
        );
    }
    if waiting.more > 0 {
        println!("  … and {} more", waiting.more);
    }
}

/// "in 44m 10s (2026-12-01T10:00:00Z)".
pub(super) fn due(ms: i64) -> String {
    let secs = ((ms - now_ms()).max(0) / 1000) as u64;
    let at = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    format!(
        "in {} ({at})",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

pub(super) fn ago(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let secs = ((now_ms() - t).max(0) / 1000) as u64;
            format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(secs))
            )
        }
    }
}

/// `jma-poller status`.
pub(super) async fn status(settings: &Settings, json: bool) -> Result<(), Failure> {
    let target = settings
        .storage
        .database_target()
        .map_err(|e| Failure::from((2, e)))?;
    let store = Store::open_read_only(&target)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    let report = store.status().await.map_err(|e| Failure::from((1, e)))?;
    let rows = store.freshness().await.map_err(|e| Failure::from((1, e)))?;
    let nodes = store.nodes().await.map_err(|e| Failure::from((1, e)))?;
    let leaders = store.leaders().await.map_err(|e| Failure::from((1, e)))?;
    store.close().await;
    let freshness = crate::freshness::summarize(&rows, now_ms(), settings.monitor.late_factor);
    if json {
        /// `status --json`: the report, plus freshness per classification and the cluster.
        #[derive(serde::Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a crate::state::StatusReport,
            freshness: &'a [crate::freshness::Freshness],
            nodes: &'a [crate::model::NodeRow],
            leaders: &'a [crate::model::LeaderRow],
        }
        let text = serde_json::to_string_pretty(&Json {
            report: &report,
            freshness: &freshness,
            nodes: &nodes,
            leaders: &leaders,
        })
        .map_err(|e| Failure::from((1, e)))?;
        println!("{text}");
        return Ok(());
    }
    println!("database: {}", target.shown());
    print_cluster(&nodes, &leaders);
    if report.cursors.is_empty() {
        println!("cursor:   none yet (the daemon has not completed a poll)");
    }
    let streams = report
        .cursors
        .iter()
        .filter(|c| c.name != crate::model::ARCHIVE_CURSOR)
        .count();
    if streams > 0 {
        println!("jmafile streams: {streams}");
    }
    for c in &report.cursors {
        if c.name == crate::model::ARCHIVE_CURSOR {
            println!(
                "archives: checked {}, every {}",
                ago(c.last_poll_ms),
                c.interval_ms
                    .map_or("-".into(), |ms| humantime::format_duration(
                        Duration::from_millis(ms as u64)
                    )
                    .to_string())
            );
        } else {
            println!(
                "  {}: types {}; {}; cursor age {} (newest item listed); last poll {}; highest serial {}; interval {} ms",
                c.name,
                if c.types.is_empty() {
                    "all".to_owned()
                } else {
                    c.types.join(",")
                },
                if c.backlog {
                    "paging back a backlog"
                } else if c.has_token {
                    "following nextPooling"
                } else {
                    "needs a baseline"
                },
                ago(c.last_received_ms),
                ago(c.last_poll_ms),
                c.high_serial.map_or("-".into(), |s| s.to_string()),
                c.interval_ms.map_or("-".into(), |s| s.to_string()),
            );
        }
        if let Some(e) = &c.last_error {
            println!("    last error ({}): {e}", ago(c.last_error_ms));
        }
    }
    println!("items:");
    if report.counts.is_empty() {
        println!("  none yet");
    }
    for c in &report.counts {
        let size = if c.bytes > 0 {
            bytesize::ByteSize(c.bytes as u64).to_string()
        } else {
            String::new()
        };
        println!("  {:<8} {:<9} {:>8}  {}", c.source, c.state, c.items, size);
    }
    for (classification, newest) in &report.archive_newest {
        let date = time::OffsetDateTime::from_unix_timestamp(newest / 1000)
            .map(|t| crate::model::time::fmt_date(t.to_offset(time::macros::offset!(+9)).date()))
            .unwrap_or_default();
        println!("archive {classification}: newest day on disk {date}");
    }
    if !report.hooks.is_empty() {
        let parts: Vec<String> = report
            .hooks
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        println!("hook runs: {}", parts.join(", "));
    }
    println!("last landed: {}", ago(report.last_landed_ms));
    print_freshness(&freshness, settings.monitor.late_factor);
    print_waiting(&report.waiting);
    if !report.recent_errors.is_empty() {
        println!("recent errors:");
        for e in &report.recent_errors {
            println!(
                "  {} {} [{}] {} after {} attempt(s), {}: {}",
                e.source,
                e.id,
                e.classification,
                e.state,
                e.attempts,
                ago(e.at_ms),
                e.error
            );
        }
    }
    Ok(())
}

/// Nodes (live or not, with their claims) and who leads each role, with lease ages.
fn print_cluster(nodes: &[crate::model::NodeRow], leaders: &[crate::model::LeaderRow]) {
    let now = now_ms();
    for n in nodes {
        let state = if n.until_ms >= now { "live" } else { "gone" };
        println!(
            "node {}: {state}, pid {}, v{}, started {}, seen {}, {} claim(s)",
            n.node,
            n.pid,
            n.version,
            ago(Some(n.started_ms)),
            ago(Some(n.seen_ms)),
            n.claims
        );
    }
    for l in leaders {
        if l.until_ms >= now {
            println!(
                "leader of {}: {} (fencing {}, since {}, renewed {}, lease ends in {}s)",
                l.role,
                l.node,
                l.fencing,
                ago(Some(l.acquired_ms)),
                ago(Some(l.renewed_ms)),
                (l.until_ms - now) / 1000
            );
        } else {
            println!(
                "leader of {}: none (last {}, lease ended {})",
                l.role,
                l.node,
                ago(Some(l.until_ms.max(l.renewed_ms)))
            );
        }
    }
}
