//! Logging: human-readable text (coloured only on a terminal) or one JSON object per line
//! (`log.format = "json"`), filtered by `log.level` unless `RUST_LOG` is set. Logs go to
//! stderr so stdout stays clean for command output (`status`, `check-config`).
//!
//! Field names are stable for people and log shippers: `event`, `id`, `serial`,
//! `classification`, `bytes`, `ms`, `path`, `error`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &LogSettings) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder().parse_lossy(v),
        _ => EnvFilter::builder().parse_lossy(&settings.level),
    };
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Auto | LogFormat::Pretty => builder.with_ansi(tty).with_target(false).try_init(),
    };
}
