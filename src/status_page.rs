//! `GET /` on `server.listen`: one self-contained HTML page for operators without Grafana.
//! Freshness per classification (late ones marked), the queue, recent failures with their
//! reasons, and the landings of the last 24 hours as an inline SVG chart.
//!
//! Read-only (the same cheap queries as `/metrics` and `status`), no external assets, no
//! script; it reloads itself every [`REFRESH_SECS`] seconds. Every value that reaches the page
//! is escaped: classification names, ids and error texts come from upstream.

use std::fmt::Write;
use std::time::Duration;

use crate::freshness::Freshness;
use crate::state::prelude::*;
use crate::state::{StatusReport, Store, StoreError};

/// How often the page reloads itself.
pub const REFRESH_SECS: u32 = 30;

/// Hours in the landings chart.
const CHART_HOURS: i64 = 24;

/// Builds the page from the store's current state.
pub async fn render(store: &Store, late_factor: f64, now: i64) -> Result<String, StoreError> {
    let rows = store.freshness().await?;
    let fresh = crate::freshness::summarize(&rows, now, late_factor);
    let queue = store.queue_depth().await?;
    let report = store.status().await?;
    let landings = store.landings_per_hour(now, CHART_HOURS).await?;
    Ok(page(&Page {
        fresh: &fresh,
        queue: &queue,
        report: &report,
        landings: &landings,
        late_factor,
        now,
    }))
}

/// Everything the page shows.
struct Page<'a> {
    fresh: &'a [Freshness],
    queue: &'a [(&'static str, i64)],
    report: &'a StatusReport,
    landings: &'a [i64],
    late_factor: f64,
    now: i64,
}

/// `text` with the five HTML-special characters escaped (safe in text and in quoted
/// attributes).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "2026-12-01 10:04:05 UTC".
fn utc(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".into())
}

/// A duration rounded to seconds ("4m 10s").
fn span(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs((ms.max(0) / 1000) as u64)).to_string()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f0f0f0}td.n{text-align:right}\
tr.late td{background:#fde2e2}tr.late td.flag{color:#a00;font-weight:bold}\
td.flag{color:#070}.muted{color:#777}svg text{font:11px sans-serif;fill:#444}";

fn page(p: &Page) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let late = p.fresh.iter().filter(|f| f.late).count();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>jma-poller: {}</title><style>{STYLE}</style></head><body>\
         <h1>jma-poller</h1><p class=\"muted\">as of {} &middot; reloads every {REFRESH_SECS} s \
         &middot; version {}</p>",
        if late > 0 {
            format!("{late} late")
        } else {
            "ok".to_owned()
        },
        utc(p.now),
        escape(env!("CARGO_PKG_VERSION")),
    );
    freshness_table(&mut html, p);
    queue_section(&mut html, p);
    chart(&mut html, p.landings, p.now);
    failures(&mut html, p.report);
    html.push_str("</body></html>\n");
    html
}

fn freshness_table(html: &mut String, p: &Page) {
    let _ = write!(
        html,
        "<h2>Freshness</h2><p class=\"muted\">late: nothing newer received for more than {} \
         &times; the usual gap; irregular data is never late</p>",
        p.late_factor
    );
    if p.fresh.is_empty() {
        html.push_str("<p id=\"freshness\">nothing has landed yet</p>");
        return;
    }
    html.push_str(
        "<table id=\"freshness\"><tr><th>source</th><th>classification</th>\
         <th>last landed</th><th>received</th><th>age</th><th>usual gap</th><th>state</th></tr>",
    );
    for f in p.fresh {
        let (class, flag) = if f.late {
            ("late", "late")
        } else if f.expected_interval_ms.is_none() {
            ("irregular", "irregular")
        } else {
            ("ok", "ok")
        };
        let _ = write!(
            html,
            "<tr class=\"{class}\" data-classification=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"flag\">{flag}</td></tr>",
            escape(&f.classification),
            escape(&f.source),
            escape(&f.classification),
            utc(f.last_landed_ms),
            utc(f.last_received_ms),
            span(f.age_ms),
            f.expected_interval_ms.map_or("-".into(), span),
        );
    }
    html.push_str("</table>");
}

fn queue_section(html: &mut String, p: &Page) {
    html.push_str(
        "<h2>Queue</h2><table id=\"queue\"><tr><th>source</th><th>queued or in flight</th></tr>",
    );
    for (source, n) in p.queue {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
            escape(source)
        );
    }
    html.push_str("</table>");
    if !p.report.counts.is_empty() {
        html.push_str("<table id=\"items\"><tr><th>source</th><th>state</th><th>items</th></tr>");
        for c in &p.report.counts {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
                escape(&c.source),
                escape(&c.state),
                c.items
            );
        }
        html.push_str("</table>");
    }
    for w in &p.report.waiting.counts {
        let _ = write!(
            html,
            "<p>{} item(s) wait on {} (first due {})</p>",
            w.items,
            escape(w.reason.as_str()),
            utc(w.next_due_ms)
        );
    }
}

/// Bars of landings per hour, oldest left; the current hour is the last bar.
fn chart(html: &mut String, landings: &[i64], now: i64) {
    const W: i64 = 720;
    const H: i64 = 160;
    const TOP: i64 = 14;
    const BOTTOM: i64 = 20;
    let n = landings.len().max(1) as i64;
    let max = landings.iter().copied().max().unwrap_or(0).max(1);
    let total: i64 = landings.iter().sum();
    let _ = write!(
        html,
        "<h2>Landings, last {n} h</h2><svg id=\"landings\" xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\
         <title>{total} item(s) landed in the last {n} hours; at most {max} in an hour</title>\
         <line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"11\">{max}/h</text>",
        y = H - BOTTOM
    );
    let slot = W / n;
    let current_hour = now.div_euclid(3_600_000);
    for (i, count) in landings.iter().enumerate() {
        let i = i as i64;
        let height = (H - BOTTOM - TOP) * count / max;
        let hour = (current_hour - (n - 1 - i)).rem_euclid(24);
        let _ = write!(
            html,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#4a7ab5\">\
             <title>{hour:02}:00 UTC: {count}</title></rect>",
            i * slot + 1,
            H - BOTTOM - height,
            (slot - 2).max(1),
        );
        if hour % 6 == 0 {
            let _ = write!(
                html,
                "<text x=\"{}\" y=\"{}\">{hour:02}h</text>",
                i * slot + 1,
                H - 6
            );
        }
    }
    html.push_str("</svg>");
}

fn failures(html: &mut String, report: &StatusReport) {
    html.push_str("<h2>Recent failures</h2>");
    if report.recent_errors.is_empty() {
        html.push_str("<p id=\"failures\">none</p>");
        return;
    }
    html.push_str(
        "<table id=\"failures\"><tr><th>when</th><th>source</th><th>classification</th>\
         <th>id</th><th>state</th><th>attempts</th><th>reason</th></tr>",
    );
    for e in &report.recent_errors {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td>{}</td></tr>",
            e.at_ms.map_or("-".into(), utc),
            escape(&e.source),
            escape(&e.classification),
            escape(&e.id),
            escape(&e.state),
            e.attempts,
            escape(&e.error),
        );
    }
    html.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_text_is_escaped_and_late_rows_are_marked() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let now = 1_800_000_000_000;
        let fresh = [Freshness {
            source: "jmafile".into(),
            classification: "jmafile.<b>evil</b>".into(),
            last_landed_ms: now - 600_000,
            last_received_ms: now - 600_000,
            age_ms: 600_000,
            expected_interval_ms: Some(60_000),
            late: true,
        }];
        let report = StatusReport {
            cursors: vec![],
            counts: vec![],
            archive_newest: vec![],
            hooks: vec![],
            last_landed_ms: None,
            recent_errors: vec![crate::state::RecentError {
                source: "jmafile".into(),
                id: "id\"><img src=x>".into(),
                classification: "c".into(),
                state: "failed".into(),
                attempts: 1,
                error: "HTTP 404 <html>".into(),
                at_ms: Some(now),
            }],
            waiting: Default::default(),
        };
        let html = page(&Page {
            fresh: &fresh,
            queue: &[("jmafile", 3)],
            report: &report,
            landings: &[0, 5, 2],
            late_factor: 3.0,
            now,
        });
        assert!(!html.contains("<b>evil"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("jmafile.&lt;b&gt;evil&lt;/b&gt;"));
        assert!(html.contains("<tr class=\"late\""));
        assert!(html.contains("<td class=\"flag\">late</td>"));
        assert!(html.contains("HTTP 404 &lt;html&gt;"));
        assert!(html.contains("<meta http-equiv=\"refresh\""));
        assert_eq!(html.matches("<rect ").count(), 3);
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=\"http"));
    }
}
