//! Command line: `run`, `check-config`, `status`, `verify`, `demo`, `simulate`, …

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{self, Secret, Settings};
use crate::model::now_ms;
use crate::sim::{Sim, SimConfig};
use crate::state::Store;
use crate::state::prelude::*;

#[derive(Debug, Parser)]
#[command(
    name = "jma-poller",
    version,
    about = "Mirrors Japan Meteorological Agency data from the dmdata.jp API to local disk"
)]
pub struct Cli {
    /// TOML config file; env vars JMA_POLLER__SECTION__KEY override it.
    #[arg(
        long,
        short,
        global = true,
        env = "JMA_POLLER_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (polls, downloads, until SIGTERM/SIGINT).
    Run,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Show cursor, item counts, last poll and recent errors (safe while the daemon runs).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the mirror on disk against what was recorded when each item landed: missing
    /// files, changed bytes, incomplete folders, files no item owns. Exit 0 when clean, 4 when
    /// damage was found, 1 when it could not run. Safe while the daemon runs.
    Verify {
        /// Move each damaged item's file aside into {data_dir}/quarantine/ and queue the item
        /// again (subject to download.refetch_delay and the budgets). Unowned files are never
        /// touched.
        #[arg(long)]
        repair: bool,
        /// Machine-readable report on stdout (the summary line goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// List the account's WebSocket sessions (`GET /v2/socket`): open sockets count against
    /// the contract.
    Sockets {
        /// Only sessions in this state: waiting, open or closed.
        #[arg(long)]
        status: Option<String>,
        /// Machine-readable output (the API's items as a JSON array).
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the daemon is healthy, 1 when not (for Docker's HEALTHCHECK and the like):
    /// asks `/readyz` when `server.listen` is set, else reads the last poll time from SQLite.
    Healthcheck,
    /// Start the built-in simulator and run the daemon against it: no account needed.
    Demo {
        /// Where files land.
        #[arg(long, default_value = "./demo-data")]
        data_dir: PathBuf,
        /// How often the simulator publishes a new item.
        #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
        every: Duration,
    },
    /// Queue and download one classification's daily archives for a date range (JST dates).
    /// Safe while the daemon runs; Ctrl-C leaves the rest queued, run it again to resume.
    Backfill {
        /// e.g. telegram.earthquake
        #[arg(long)]
        classification: String,
        /// First date, YYYY-MM-DD (default: a week before --to).
        #[arg(long, value_parser = parse_date_arg)]
        from: Option<time::Date>,
        /// Last date, YYYY-MM-DD (default: yesterday, JST).
        #[arg(long, value_parser = parse_date_arg)]
        to: Option<time::Date>,
    },
    /// Queue failed items again with fresh attempts, after fixing what made them fail (a
    /// missing permission, a full disk). Safe while the daemon runs.
    RetryFailed {
        /// Only `jmafile` or `archive` items.
        #[arg(long)]
        source: Option<String>,
        /// Only this classification.
        #[arg(long)]
        classification: Option<String>,
    },
    /// Serve only the simulator (for trying things by hand, or benchmarks).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "sim-key")]
        key: String,
        /// Publish a new item this often (0 = never).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        every: Duration,
        /// Items already there at start.
        #[arg(long, default_value_t = 10)]
        backlog: usize,
        /// nextPoolingInterval in ms.
        #[arg(long, default_value_t = 1600)]
        interval_ms: u64,
        /// Turn off the simulated per-host rate limits.
        #[arg(long)]
        no_rate_limit: bool,
    },
}

fn parse_date_arg(s: &str) -> Result<time::Date, String> {
    crate::api::models::parse_date(s)
}

/// A failure at the binary's edge: message for the operator, and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl<E: std::fmt::Display> From<(u8, E)> for Failure {
    fn from((code, e): (u8, E)) -> Self {
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub fn main(cli: Cli) -> ExitCode {
    restrict_umask();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::telemetry::fatal(1, &format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Blocking tasks abandoned at shutdown must not hold the process open.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            crate::telemetry::fatal(f.code, &f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Permission bits every file and folder the process creates goes without: none for others,
/// no write for the group (state.sqlite and data folders 0640/0750).
const UMASK: u32 = 0o027;

/// Adds [`UMASK`] to the inherited umask, never loosening it (systemd's `UMask=0077` stays).
/// The process sets it itself because a distroless image has no shell to run `umask` in and
/// a unit's `UMask=` does not reach a container: inherited 0022 left the state world-readable.
fn restrict_umask() {
    use rustix::fs::Mode;
    let inherited = rustix::process::umask(Mode::from_bits_truncate(UMASK));
    rustix::process::umask(inherited | Mode::from_bits_truncate(UMASK));
}

fn load(path: &Option<PathBuf>) -> Result<Settings, Failure> {
    config::load(path.as_deref()).map_err(|e| (2, e).into())
}

/// Cancels `token` on SIGTERM or SIGINT; a second signal exits at once.
fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            event = "signal",
            signal = name,
            "received {name}; shutting down"
        );
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("second signal: exiting immediately");
        std::process::exit(130);
    });
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run => {
            let settings = load(&cli.config)?;
            crate::telemetry::init(&settings.log);
            let token = CancellationToken::new();
            stop_on_signals(token.clone());
            crate::app::run(settings, token).await.map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            })
        }
        Command::CheckConfig => {
            let settings = load(&cli.config)?;
            settings.api_key().map_err(|e| Failure::from((2, e)))?;
            crate::api::tls::ca_file_roots(&settings).map_err(|e| Failure::from((2, e)))?;
            crate::api::tls::check_ssl_cert_file().map_err(|e| Failure::from((2, e)))?;
            print!("{}", settings.to_toml());
            if settings.jmafile.enabled {
                print_stream_plan(&settings);
            }
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Status { json } => {
            let settings = load(&cli.config)?;
            status(&settings, json).await
        }
        Command::Demo { data_dir, every } => {
            let mut settings = load(&cli.config)?;
            crate::telemetry::init(&settings.log);
            prepare_demo_dir(&data_dir)?;
            let sim = Sim::start(SimConfig::default())
                .await
                .map_err(|e| Failure::from((1, e)))?;
            sim.add_history(12, Duration::from_secs(600));
            sim.spawn_generator(every);
            sim.add_archive_days(&["telegram.earthquake", "telegram.weather"], 3);
            settings.archive.enabled = true;
            settings.api.base_url = sim.base_url().parse().map_err(|e| Failure::from((1, e)))?;
            settings.api.key = Some(Secret::new(sim.key()));
            settings.api.key_file = None;
            settings.storage.data_dir = data_dir.clone();
            settings.storage.database = None;
            eprintln!(
                "demo: simulated dmdata.jp API at {} (a new item every {}); files land in {}\n\
                 demo: try `jma-poller status` with JMA_POLLER__STORAGE__DATA_DIR={} in another terminal; Ctrl-C stops",
                sim.base_url(),
                humantime::format_duration(every),
                data_dir.display(),
                data_dir.display()
            );
            let token = CancellationToken::new();
            stop_on_signals(token.clone());
            let r = crate::app::run(settings, token).await;
            sim.stop();
            r.map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            })
        }
        Command::Backfill {
            classification,
            from,
            to,
        } => {
            let mut settings = load(&cli.config)?;
            if std::io::stderr().is_terminal() && std::env::var_os("RUST_LOG").is_none() {
                // The progress bar reports each archive; keep only problems in the log.
                settings.log.level = "warn".into();
            }
            crate::telemetry::init(&settings.log);
            if crate::storage::safe_component(&classification).is_err() {
                return Err(Failure::from((
                    2,
                    format!("--classification {classification:?} is not a classification name"),
                )));
            }
            let to =
                to.unwrap_or_else(|| crate::model::time::jst_today() - time::Duration::days(1));
            let from = from.unwrap_or(to - time::Duration::days(6));
            if from > to {
                return Err(Failure::from((2, "--from is after --to")));
            }
            let token = CancellationToken::new();
            stop_on_signals(token.clone());
            let r = crate::backfill::run(settings, classification.clone(), from, to, token)
                .await
                .map_err(|e| Failure {
                    code: e.exit_code(),
                    message: e.to_string(),
                })?;
            let range = format!(
                "{classification} {}..{}",
                crate::model::time::fmt_date(from),
                crate::model::time::fmt_date(to)
            );
            if r.interrupted {
                return Err(Failure::from((
                    130,
                    format!(
                        "interrupted: {} of {} archives of {range} done; run the same command again to resume",
                        r.done, r.total
                    ),
                )));
            }
            if r.failed > 0 {
                return Err(Failure::from((
                    1,
                    format!(
                        "{} of {} archives of {range} failed (see `jma-poller status`)",
                        r.failed, r.total
                    ),
                )));
            }
            eprintln!("backfill: {} archives of {range} on disk", r.done);
            Ok(())
        }
        Command::RetryFailed {
            source,
            classification,
        } => {
            let settings = load(&cli.config)?;
            let source = match source.as_deref() {
                None => None,
                Some(s) => Some(crate::model::Source::parse(s).ok_or_else(|| {
                    Failure::from((2, format!("--source {s:?}: use jmafile or archive")))
                })?),
            };
            let target = settings
                .storage
                .database_target()
                .map_err(|e| Failure::from((2, e)))?;
            if let Some(path) = target.sqlite_path()
                && !path.exists()
            {
                return Err(Failure::from((
                    1,
                    format!("no database at {}", path.display()),
                )));
            }
            let store = Store::open(&target)
                .await
                .map_err(|e| Failure::from((1, e)))?;
            let (queued, left) = store
                .retry_failed(source, classification.as_deref())
                .await
                .map_err(|e| Failure::from((1, e)))?;
            store.close().await;
            println!("{queued} failed item(s) queued again");
            if left > 0 {
                println!(
                    "{left} item(s) stay failed: they were refused when listed (unsafe name, untrusted host, malformed entry) and cannot be fetched"
                );
            }
            Ok(())
        }
        Command::Sockets { status, json } => {
            let settings = load(&cli.config)?;
            if let Some(st) = status.as_deref()
                && !["waiting", "open", "closed"].contains(&st)
            {
                return Err(Failure::from((
                    2,
                    format!("--status {st:?}: use waiting, open or closed"),
                )));
            }
            let key = settings.api_key().map_err(|e| Failure::from((2, e)))?;
            let client = crate::api::Client::new(&settings, key).map_err(|e| {
                let code = if matches!(e, crate::api::ClientError::Config(_)) {
                    2
                } else {
                    1
                };
                Failure::from((code, e))
            })?;
            sockets(&client, status.as_deref(), json).await
        }
        Command::Verify { repair, json } => {
            let mut settings = load(&cli.config)?;
            if std::io::stderr().is_terminal() && std::env::var_os("RUST_LOG").is_none() {
                // The progress bar shows the work; keep only problems in the log.
                settings.log.level = "warn".into();
            }
            crate::telemetry::init(&settings.log);
            verify(&settings, repair, json).await
        }
        Command::Healthcheck => {
            let settings = load(&cli.config)?;
            healthcheck(&settings).await
        }
        Command::Simulate {
            listen,
            key,
            every,
            backlog,
            interval_ms,
            no_rate_limit,
        } => {
            crate::telemetry::init(&config::LogSettings::default());
            let mut cfg = SimConfig {
                key,
                pooling_interval_ms: interval_ms,
                ..SimConfig::default()
            };
            if no_rate_limit {
                cfg.data_limit = None;
                cfg.api_limit = None;
            }
            let sim = Sim::start_on(listen, cfg)
                .await
                .map_err(|e| Failure::from((1, e)))?;
            sim.add_history(backlog, Duration::from_secs(1800));
            if !every.is_zero() {
                sim.spawn_generator(every);
            }
            println!("{}", sim.base_url());
            eprintln!(
                "simulator listening on {} (key {:?}); Ctrl-C stops",
                sim.base_url(),
                sim.key()
            );
            let token = CancellationToken::new();
            stop_on_signals(token.clone());
            token.cancelled().await;
            sim.stop();
            Ok(())
        }
    }
}

/// `jma-poller verify`: runs both passes, prints the findings (or the JSON report) and the
/// summary line; exit [`crate::verify::EXIT_DAMAGED`] when anything was found.
async fn verify(settings: &Settings, repair: bool, json: bool) -> Result<(), Failure> {
    let target = settings
        .storage
        .database_target()
        .map_err(|e| Failure::from((2, e)))?;
    if let Some(path) = target.sqlite_path()
        && !path.exists()
    {
        return Err(Failure::from((
            1,
            format!("no database at {} (storage.database)", path.display()),
        )));
    }
    let store = Store::open(&target)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    let opts = crate::verify::Options {
        data_dir: settings.storage.data_dir.clone(),
        database: PathBuf::from(target.shown()),
        repair,
        progress: true,
    };
    let result = crate::verify::run(&store, &opts).await;
    store.close().await;
    let report = result.map_err(|e| Failure::from((1, e)))?;
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Failure::from((1, e)))?;
        println!("{text}");
        eprintln!("{}", report.summary());
    } else {
        print_verify_findings(&report);
        println!("{}", report.summary());
    }
    if report.clean() {
        return Ok(());
    }
    Err(Failure::from((
        crate::verify::EXIT_DAMAGED,
        format!(
            "verify found damage: {} missing, {} changed, {} incomplete, {} unowned{}",
            report.missing,
            report.changed,
            report.incomplete,
            report.unowned,
            if repair {
                ""
            } else {
                " (`jma-poller verify --repair` moves damaged files aside and fetches them again)"
            }
        ),
    )))
}

fn print_verify_findings(report: &crate::verify::Report) {
    for d in &report.damaged {
        let repair = match &d.repair {
            None => String::new(),
            Some(crate::verify::Repair::Queued {
                quarantined,
                due_ms,
            }) => format!(
                " -> queued again, due {}{}",
                due(*due_ms),
                quarantined
                    .as_deref()
                    .map(|q| format!(", damaged copy moved to {q}"))
                    .unwrap_or_default()
            ),
            Some(crate::verify::Repair::Unrecoverable { reason }) => {
                format!(" -> unrecoverable: {reason}")
            }
            Some(crate::verify::Repair::Skipped { reason }) => format!(" -> skipped: {reason}"),
        };
        println!(
            "{:<10} {} {} [{}] {}: {}{repair}",
            d.problem.as_str(),
            d.source,
            d.id,
            d.classification,
            d.path,
            d.detail
        );
    }
    for f in &report.unowned_files {
        println!("{:<10} {f}: no item owns this file (left alone)", "unowned");
    }
    let listed = (report.damaged.len() + report.unowned_files.len()) as u64;
    let total = report.missing + report.changed + report.incomplete + report.unowned;
    if total > listed {
        println!(
            "… and {} more (listed: the first {} of each kind)",
            total - listed,
            crate::verify::LISTED
        );
    }
}

/// Marks a directory as the demo's own, so a later demo may clear it.
const DEMO_MARKER: &str = ".jma-poller-demo";

/// Each demo run simulates a new world, so the previous run's state means nothing to it (its
/// items point at a simulator that is gone). Start fresh, but only in a directory the demo
/// created itself.
fn prepare_demo_dir(dir: &std::path::Path) -> Result<(), Failure> {
    let marker = dir.join(DEMO_MARKER);
    let io = |e: std::io::Error| Failure::from((1, format!("demo dir {}: {e}", dir.display())));
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(io)?.next().is_none();
        if !empty && !marker.exists() {
            return Err(Failure::from((
                2,
                format!(
                    "{} exists and was not created by `jma-poller demo`; pass --data-dir with a new or demo directory",
                    dir.display()
                ),
            )));
        }
        if !empty {
            eprintln!(
                "demo: clearing {} from the previous demo run",
                dir.display()
            );
            std::fs::remove_dir_all(dir).map_err(io)?;
        }
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(
        &marker,
        "created by `jma-poller demo`; the next demo run clears this folder\n",
    )
    .map_err(io)?;
    Ok(())
}

/// Pages through `/v2/socket` (at most 50 pages) and prints the sessions.
async fn sockets(
    client: &crate::api::Client,
    status: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let mut raw_items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let mut q: Vec<(&str, String)> = vec![("limit", "100".into())];
        if let Some(st) = status {
            q.push(("status", st.into()));
        }
        if let Some(c) = &cursor {
            q.push(("cursorToken", c.clone()));
        }
        let page = client.list("/v2/socket", &q).await.map_err(|e| {
            let code = if e.is_auth() { 3 } else { 1 };
            Failure::from((code, e))
        })?;
        raw_items.extend(page.items);
        match page.next_token {
            Some(t) => cursor = Some(t),
            None => break,
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&raw_items).map_err(|e| Failure::from((1, e)))?;
        println!("{text}");
        return Ok(());
    }
    if raw_items.is_empty() {
        println!(
            "no WebSocket sessions{}",
            status
                .map(|s| format!(" with status {s}"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<8} {:<8} {:<20} {:<24} {:<24} {:<24} {:<15} {:<14} {:<24} classifications",
        "id", "status", "app", "start", "end", "last ping", "ip", "server", "types"
    );
    for raw in raw_items {
        match serde_json::from_value::<crate::api::models::SocketItem>(raw.clone()) {
            Ok(s) => println!(
                "{:<8} {:<8} {:<20} {:<24} {:<24} {:<24} {:<15} {:<14} {:<24} {}",
                s.id,
                s.status,
                s.app_name.as_deref().unwrap_or("-"),
                s.start.as_deref().unwrap_or("-"),
                s.end.as_deref().unwrap_or("-"),
                s.ping.as_deref().unwrap_or("-"),
                s.ip_address.as_deref().unwrap_or("-"),
                s.server.as_deref().unwrap_or("-"),
                // null = every type of the classifications
                s.types.as_ref().map_or("all".to_owned(), |t| t.join(",")),
                s.classifications.join(",")
            ),
            Err(e) => println!(
                "(unreadable entry: {e}: {})",
                raw.to_string().chars().take(120).collect::<String>()
            ),
        }
    }
    Ok(())
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

/// What `jmafile.types` plans (on stderr, so stdout stays the effective TOML).
fn print_stream_plan(settings: &Settings) {
    let plan = crate::poll::streams::plan(&settings.jmafile.types, crate::catalog::get());
    eprintln!("jmafile: {} PuLL stream(s)", plan.streams.len());
    for s in &plan.streams {
        let types = s.types();
        eprintln!(
            "  {}: type={}",
            s.name,
            if types.is_empty() {
                "(none: everything)".to_owned()
            } else {
                types.join(",")
            }
        );
    }
    for entry in &plan.unknown {
        eprintln!(
            "  warning: {entry:?} matches no data identifier in the built-in catalog (a typo, or a product newer than the catalog?); followed as a prefix"
        );
    }
    for (entry, by) in &plan.covered {
        eprintln!("  note: {entry:?} is covered by the prefix {by:?}");
    }
}

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
fn due(ms: i64) -> String {
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

fn ago(ms: Option<i64>) -> String {
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

async fn status(settings: &Settings, json: bool) -> Result<(), Failure> {
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
