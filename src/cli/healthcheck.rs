//! `healthcheck`: exit 0 when the daemon is healthy (Docker's HEALTHCHECK).

use std::path::PathBuf;
use std::time::Duration;

use super::status::ago;
use super::{Failure, load};
use crate::config::Settings;
use crate::model::now_ms;
use crate::state::Store;
use crate::state::prelude::*;

/// `jma-poller healthcheck`.
pub(super) async fn command(config: &Option<PathBuf>) -> Result<(), Failure> {
    let settings = load(config)?;
    healthcheck(&settings).await
}

async fn healthcheck(settings: &Settings) -> Result<(), Failure> {
    if let Some(addr) = settings.server.listen {
        // A daemon listening on 0.0.0.0 (the container image) is reached on loopback.
        let ip = match addr.ip() {
            ip if !ip.is_unspecified() => ip,
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        let url = format!(
            "http://{}/readyz",
            std::net::SocketAddr::new(ip, addr.port())
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::from((1, e)))?;
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| Failure::from((1, format!("{url}: {}", crate::api::chain(&e)))))?;
        let ok = response.status().is_success();
        let body = response.text().await.unwrap_or_default();
        if ok {
            print!("{body}");
            return Ok(());
        }
        return Err(Failure::from((1, format!("{url}: {}", body.trim()))));
    }
    let target = settings
        .storage
        .database_target()
        .map_err(|e| Failure::from((2, e)))?;
    let store = Store::open_read_only(&target)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    let report = store.status().await.map_err(|e| Failure::from((1, e)))?;
    store.close().await;
    let staleness = settings.server.ready_staleness.as_millis() as i64;
    let stale = |t: Option<i64>| t.is_none_or(|t| now_ms() - t > staleness);
    let not_ready = |what: String, t: Option<i64>| {
        Failure::from((
            1,
            format!(
                "not ready: {what}last successful poll {} (server.ready_staleness is {})",
                ago(t),
                humantime::format_duration(settings.server.ready_staleness)
            ),
        ))
    };
    // Every jmafile stream must be polling; without streams (archives only), the newest check.
    let streams: Vec<_> = report
        .cursors
        .iter()
        .filter(|c| settings.jmafile.enabled && c.name != crate::model::ARCHIVE_CURSOR)
        .collect();
    if streams.is_empty() {
        let last = report.cursors.iter().filter_map(|c| c.last_poll_ms).max();
        if stale(last) {
            return Err(not_ready(String::new(), last));
        }
        println!("ready: last successful poll {}", ago(last));
        return Ok(());
    }
    if let Some(c) = streams.iter().find(|c| stale(c.last_poll_ms)) {
        let error = c
            .last_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(not_ready(
            format!("stream {}{error}: ", c.name),
            c.last_poll_ms,
        ));
    }
    let oldest = streams.iter().filter_map(|c| c.last_poll_ms).min();
    println!("ready: last successful poll {}", ago(oldest));
    Ok(())
}
