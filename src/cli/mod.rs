//! Command line: parsing, the exit codes, signals, and one module per command: the daemon
//! and the simulator (`daemon`: `run`, `demo`, `simulate`), `check_config`, `status`,
//! `verify`, `backfill`, `retry_failed`, `sockets`, `healthcheck`, `state_copy`.

mod backfill;
mod check_config;
mod daemon;
mod healthcheck;
mod retry_failed;
mod sockets;
mod state_copy;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{self, Settings};

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
    /// Work on the state database itself.
    State {
        #[command(subcommand)]
        command: StateCommand,
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

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Copy one node's whole state (cursors, every item with its files and hooks, freshness,
    /// the fetch log) into a new, empty database: a single SQLite node into PostgreSQL to join
    /// a cluster, or back. Nothing done is downloaded again. Stop the daemon first (a SQLite
    /// source whose data dir is locked is refused); claims in flight go back to pending.
    /// Exit 2 when the target is not empty.
    Copy {
        /// The new database: a SQLite file path or a postgres:// URL (password from the URL,
        /// else storage.database_password_file or the database_password credential).
        #[arg(long, value_name = "DATABASE")]
        to: String,
        /// The database to copy (default: storage.database).
        #[arg(long, value_name = "DATABASE")]
        from: Option<String>,
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

/// Runs one command (each lives in a module of its own).
async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let config = &cli.config;
    match cli.command {
        Command::Run => daemon::run(config).await,
        Command::CheckConfig => check_config::check_config(config),
        Command::Status { json } => status::status(&load(config)?, json).await,
        Command::Demo { data_dir, every } => daemon::demo(config, data_dir, every).await,
        Command::Backfill {
            classification,
            from,
            to,
        } => backfill::backfill(config, classification, from, to).await,
        Command::RetryFailed {
            source,
            classification,
        } => retry_failed::retry_failed(config, source, classification).await,
        Command::Sockets { status, json } => sockets::command(config, status, json).await,
        Command::Verify { repair, json } => verify::command(config, repair, json).await,
        Command::Healthcheck => healthcheck::command(config).await,
        Command::State {
            command: StateCommand::Copy { to, from },
        } => state_copy::command(config, to, from).await,
        Command::Simulate {
            listen,
            key,
            every,
            backlog,
            interval_ms,
            no_rate_limit,
        } => {
            daemon::simulate(daemon::SimulateArgs {
                listen,
                key,
                every,
                backlog,
                interval_ms,
                no_rate_limit,
            })
            .await
        }
    }
}
