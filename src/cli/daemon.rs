//! `run`, `demo` and `simulate`: the daemon, alone or against the built-in simulator.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Failure, load, stop_on_signals};
use crate::config::{self, Secret};
use crate::sim::{Sim, SimConfig};

/// `jma-poller run`: the daemon until SIGTERM/SIGINT.
pub(super) async fn run(config: &Option<PathBuf>) -> Result<(), Failure> {
    let settings = load(config)?;
    crate::telemetry::init(&settings.log);
    let token = CancellationToken::new();
    stop_on_signals(token.clone());
    crate::app::run(settings, token).await.map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })
}

/// `jma-poller demo`: the simulator and the daemon against it, in a demo folder.
pub(super) async fn demo(
    config: &Option<PathBuf>,
    data_dir: PathBuf,
    every: Duration,
) -> Result<(), Failure> {
    let mut settings = load(config)?;
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

/// The options of `jma-poller simulate`.
pub(super) struct SimulateArgs {
    pub listen: std::net::SocketAddr,
    pub key: String,
    pub every: Duration,
    pub backlog: usize,
    pub interval_ms: u64,
    pub no_rate_limit: bool,
}

/// `jma-poller simulate`: only the simulator, until Ctrl-C.
pub(super) async fn simulate(args: SimulateArgs) -> Result<(), Failure> {
    let SimulateArgs {
        listen,
        key,
        every,
        backlog,
        interval_ms,
        no_rate_limit,
    } = args;
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
