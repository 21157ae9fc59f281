//! Logging: human-readable text (coloured only on a terminal) or one JSON object per line
//! (`log.format = "json"`), filtered by `log.level` unless `RUST_LOG` is set. Logs go to
//! stderr so stdout stays clean for command output (`status`, `check-config`).
//!
//! Field names are stable for people and log shippers: `event`, `id`, `serial`,
//! `classification`, `bytes`, `ms`, `path`, `error`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// True when stderr is the journal: systemd sets `JOURNAL_STREAM=dev:inode` for the stream it
/// connected, and a child may inherit the variable, so it is compared with stderr itself.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = var.split_once(':') else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}

/// Prefixes each line with its syslog priority (`<3>` error … `<7>` debug), which journald
/// reads when stdout/stderr is connected to it: `journalctl -p warning` then works.
struct Priority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Priority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prefix = match *event.metadata().level() {
            tracing::Level::ERROR => "<3>",
            tracing::Level::WARN => "<4>",
            tracing::Level::INFO => "<6>",
            _ => "<7>",
        };
        writer.write_str(prefix)?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
///
/// `auto`: under systemd (stderr is the journal) plain text with priority prefixes and no
/// timestamps (journald adds its own); on a terminal, coloured text; otherwise plain text.
pub fn init(settings: &LogSettings) {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => settings.level.clone(),
    };
    let filter = EnvFilter::builder().parse_lossy(quiet_dependencies(&directives));
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // The innermost span (an item's id, serial, classification, or a poll's stream), so
            // events deep in an attempt (decoder warnings, retries) say which item they are about.
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Auto if !tty && stderr_is_journal() => builder
            .with_ansi(false)
            .event_format(Priority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_target(false)
                    .with_ansi(false),
            ))
            .try_init(),
        LogFormat::Auto | LogFormat::Pretty => builder.with_ansi(tty).with_target(false).try_init(),
    };
}

/// Adds `rustls_platform_verifier=off` unless the filter names that crate: it logs every
/// refused certificate at error level, on every attempt and without saying what to do, while
/// the API client turns the same verdict into one actionable line (`tls_refused`).
fn quiet_dependencies(directives: &str) -> String {
    const VERIFIER: &str = "rustls_platform_verifier";
    if directives.contains(VERIFIER) {
        directives.to_owned()
    } else {
        format!("{directives},{VERIFIER}=off")
    }
}

/// Reports why the process is about to exit with `code`: the last line it writes, and the only
/// one carrying the reason (callers do not log it beforehand). It goes at error priority, so
/// `journalctl -p err` shows why a unit failed: through the log subscriber when one is installed
/// (same format as every other line: JSON in a container, `<3>`-prefixed text under journald),
/// otherwise (a bad configuration stops the process before logging starts) as plain
/// `error: …`, prefixed with `<3>` when stderr is the journal.
pub fn fatal(code: u8, message: &str) {
    if tracing::dispatcher::has_been_set() && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(event = "exit", exit_code = code, "{message}");
    } else {
        let priority = if stderr_is_journal() { "<3>" } else { "" };
        eprintln!("{priority}error: {message}");
    }
}

/// The process-wide Prometheus recorder (installed once; every daemon in a process, e.g. the
/// tests, shares it). Metrics recorded before it exists are dropped, so `app::run` installs it
/// first.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &seconds,
            )
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, which this crate never does.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
