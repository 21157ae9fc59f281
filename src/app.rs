//! Wires the parts together and runs them until shutdown: storage (lock, temp sweep), state
//! (migrations), crash recovery, the API client, the PuLL task and the download workers.
//!
//! Shutdown: the token stops every task at its next wait; transfers in flight are abandoned and
//! their items queued again; the process waits at most [`SHUTDOWN_GRACE`] for its tasks and a
//! few seconds more for the database to close, then leaves what is still running (SQLite and
//! the `.tmp/` sweep make that harmless).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{ApiError, Client, ClientError};
use crate::cluster::{Membership, MembershipError, RoleLease};
use crate::config::{ConfigError, Secret, Settings};
use crate::download::Downloader;
use crate::health::Health;
use crate::model::{Claim, now_ms};
use crate::poll::archive::ArchivePoller;
use crate::poll::jmafile::JmaFilePoller;
use crate::poll::streams::StreamPlan;
use crate::state::prelude::*;
use crate::state::{DatabaseTarget, Store, StoreError};
use crate::storage::{Storage, StorageError};

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// After the tasks: how long closing the database may take.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Why the daemon stopped with an error; [`RunError::exit_code`] maps it for the shell.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the API refused the key on the first request ({0}); check api.key / api.key_file and the key's jmafile.list and jmafile.data permissions"
    )]
    Auth(ApiError),
    #[error(
        "the account's contract covers none of the sources this configuration asks for: {}. Add the contracts in the dmdata.jp console, or change jmafile.types / archive.classifications / the *.enabled settings",
        describe_refusals(.0)
    )]
    NoContract(Vec<(String, String)>),
    #[error("{0}")]
    Client(String),
    #[error("task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Cluster(#[from] MembershipError),
}

impl RunError {
    /// 2 = configuration, 3 = key or contract refused at start (restarting will not help),
    /// 1 = other.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Cluster(MembershipError::Taken { .. }) => 2,
            RunError::Auth(_) | RunError::NoContract(_) => 3,
            _ => 1,
        }
    }
}

/// `jmafile stream x (No contract.), archive:y (No contract.)`.
fn describe_refusals(refusals: &[(String, String)]) -> String {
    refusals
        .iter()
        .map(|(unit, message)| {
            let kind = if unit.starts_with(crate::poll::archive::CURSOR) {
                ""
            } else {
                "jmafile stream "
            };
            format!("{kind}{unit} (HTTP 402 {message:?})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The API client, with the body-download budget replaying requests logged before a restart
/// (a crash loop must not turn into a burst upstream).
pub async fn client(
    settings: &Settings,
    key: Secret,
    store: &Store,
) -> Result<Arc<Client>, RunError> {
    let client = Client::new(settings, key).map_err(|e| match e {
        ClientError::Config(e) => RunError::Config(e),
        ClientError::Build(_) => RunError::Client(e.to_string()),
    })?;
    let window = settings.limits.data_window;
    let now = now_ms();
    let recent = store
        .recent_fetches(now - window.as_millis() as i64, now)
        .await?;
    if !recent.is_empty() {
        client.data_budget().restore(
            recent
                .iter()
                .map(|t| Duration::from_millis((now - t).max(0) as u64)),
        );
    }
    // The limits are the account's: every node books its requests in the shared store.
    let ledger: Arc<dyn crate::api::budget::Ledger> = Arc::new(store.clone());
    client.data_budget().share(ledger.clone());
    client.api_budget().share(ledger);
    Ok(Arc::new(client))
}

/// Plans the jmafile PuLL streams for `jmafile.types` and prepares their cursors; says at start
/// what it planned, which entries the catalog does not know (a typo, or a product newer than
/// the catalog: listed as prefixes all the same) and which need no stream of their own.
async fn plan_streams(settings: &Settings, store: &Store) -> Result<StreamPlan, RunError> {
    let plan = crate::poll::streams::plan(&settings.jmafile.types, crate::catalog::get());
    for entry in &plan.unknown {
        warn!(
            event = "type_unknown",
            entry = %entry,
            "jmafile.types entry {entry:?} matches no data identifier in the built-in catalog (a typo, or a product newer than the catalog?); it is listed as a prefix"
        );
    }
    for (entry, by) in &plan.covered {
        info!(
            event = "type_covered",
            entry = %entry,
            by = %by,
            "jmafile.types entry {entry:?} is covered by the prefix {by:?}; no stream of its own"
        );
    }
    let prepared = crate::poll::streams::prepare(store, &plan).await?;
    for (from, to) in &prepared.adopted {
        info!(event = "stream_adopted", from = %from, stream = %to, "the cursor kept for these types continues as stream {to}");
    }
    if !prepared.retired.is_empty() {
        info!(event = "streams_retired", streams = ?prepared.retired, "jmafile.types changed: cursors of streams no longer planned removed");
    }
    info!(
        event = "streams",
        count = plan.streams.len(),
        streams = ?plan.names(),
        "jmafile: {} PuLL stream(s)",
        plan.streams.len()
    );
    Ok(plan)
}

/// Runs the daemon until `shutdown` is cancelled or a task fails fatally.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    Application::build(settings)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// The daemon, built and not yet running: the port is bound (tests read the real one from
/// [`Application::local_addr`]), storage locked and swept, the database open and migrated, the
/// API client made and this node's interrupted claims resolved.
pub struct Application {
    settings: Settings,
    membership: Membership,
    listener: Option<tokio::net::TcpListener>,
    storage: Arc<Storage>,
    store: Store,
    client: Arc<Client>,
    health: Arc<Health>,
    wake: Arc<Notify>,
    downloader: Arc<Downloader>,
}

impl Application {
    /// Builds every part in order, failing on the first that cannot start: the listener first
    /// (a busy port is a configuration problem, reported before anything else).
    pub async fn build(settings: Settings) -> Result<Application, RunError> {
        let key = settings.api_key()?;
        let listener = bind(&settings).await?;
        crate::telemetry::metrics();
        let target = settings.storage.database_target()?;
        // The data dir's `.lock` keeps a second daemon off a SQLite node's files; on
        // PostgreSQL the nodes share the database (node identity in it takes the lock's place).
        let storage = match &target {
            DatabaseTarget::Sqlite(_) => {
                Storage::open_as(&settings.storage.data_dir, &settings.cluster.node(), true)?
            }
            DatabaseTarget::Postgres(_) => {
                Storage::open_as(&settings.storage.data_dir, &settings.cluster.node(), false)?
            }
        };
        let storage = Arc::new(storage.with_min_free(settings.storage.min_free.as_u64()));
        let store = Store::open(&target)
            .await?
            .with_node(settings.cluster.node())
            .with_hooks(!settings.hooks.on_file.is_empty())
            .with_refetch_delay(settings.download.refetch_delay);
        // SQLite: the data dir's lock (taken above) already proves no other process runs as
        // this node, so a registration left by a killed predecessor is taken at once. On
        // PostgreSQL no lock was taken: the registry alone decides (a live one refuses us).
        let exclusive = matches!(target, DatabaseTarget::Sqlite(_));
        let membership = Membership::join(&store, settings.cluster.lease, exclusive).await?;
        let client = client(&settings, key, &store).await?;
        let health = Arc::new(Health::default());
        health.set_files(store.done_count().await?);
        // Exported from the start (0), so dashboards and alerts see "not paused" rather than
        // nothing until the first pause.
        health.set_paused(false);
        let wake = Arc::new(Notify::new());
        let downloader = Arc::new(Downloader::new(
            store.clone(),
            client.clone(),
            storage.clone(),
            settings.download.clone(),
            wake.clone(),
            health.clone(),
        ));
        downloader.recover().await?;
        log_started(&settings);
        Ok(Application {
            settings,
            membership,
            listener,
            storage,
            store,
            client,
            health,
            wake,
            downloader,
        })
    }

    /// The address `/healthz`, `/readyz` and `/metrics` are served on (with `server.listen`).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts every task, waits for `shutdown` or a fatal task error, then stops them within
    /// [`SHUTDOWN_GRACE`] and closes the database.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let tasks_cancel = shutdown.child_token();
        let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
        let store = self.store.clone();
        self.spawn_tasks(&mut tasks, &tasks_cancel).await?;
        let result = wait_for_stop(&mut tasks, &shutdown).await;
        tasks_cancel.cancel();
        stop(tasks, store).await;
        // An error is reported once, by the binary's edge, as the last line before the exit
        // (`telemetry::fatal`, at error priority): logging it here too printed it twice.
        if result.is_ok() {
            info!(event = "stopped", "stopped cleanly");
        }
        result
    }

    /// Every long-running task, in the order they used to start.
    async fn spawn_tasks(
        self,
        tasks: &mut JoinSet<Result<(), RunError>>,
        cancel: &CancellationToken,
    ) -> Result<(), RunError> {
        let Application {
            settings,
            membership,
            listener,
            storage,
            store,
            client,
            health,
            wake,
            downloader,
        } = self;
        let polling = settings.jmafile.enabled || settings.archive.enabled;
        if let Some(listener) = listener {
            info!(event = "listening", addr = %settings.server.listen.map(|a| a.to_string()).unwrap_or_default(), "serving /, /healthz, /readyz and /metrics");
            let staleness = polling.then_some(settings.server.ready_staleness);
            let (h, st, c) = (health.clone(), store.clone(), cancel.clone());
            let monitor = crate::server::Monitor {
                storage: storage.clone(),
                late_factor: settings.monitor.late_factor,
            };
            tasks.spawn(async move {
                crate::server::serve(listener, h, st, staleness, monitor, c).await;
                Ok(())
            });
        }
        {
            let (h, st, cl, c) = (
                health.clone(),
                store.clone(),
                client.clone(),
                cancel.clone(),
            );
            tasks.spawn(async move {
                crate::health::supervise(h, st, cl, c).await;
                Ok(())
            });
        }
        if !settings.hooks.on_file.is_empty() {
            let (st, sg, hs, h, c) = (
                store.clone(),
                storage.clone(),
                settings.hooks.clone(),
                health.clone(),
                cancel.clone(),
            );
            tasks.spawn(async move {
                crate::hooks::run(st, sg, hs, h, c).await;
                Ok(())
            });
        }
        {
            let (st, c) = (store.clone(), cancel.clone());
            tasks.spawn(async move { membership.keep(st, c).await.map_err(RunError::from) });
        }
        if let Some(retention) = settings.storage.retention {
            let lease = spawn_lease(
                tasks,
                crate::cluster::ROLE_RETENTION,
                &settings,
                &store,
                &health,
                cancel,
            );
            let (st, sg) = (store.clone(), storage.clone());
            tasks.spawn(crate::cluster::while_leading(
                lease,
                cancel.clone(),
                move |c| {
                    let (st, sg) = (st.clone(), sg.clone());
                    async move {
                        crate::retention::run(st, sg, retention, c).await;
                        Ok(())
                    }
                },
            ));
        }
        if !polling {
            health.assume_contacted();
        }
        // READY=1 (with the current STATUS=) comes from `health::supervise` once config,
        // database and the first API contact are good.
        let parts = Parts {
            settings: &settings,
            store: &store,
            client: &client,
            health: &health,
            wake: &wake,
            cancel,
        };
        if settings.jmafile.enabled {
            spawn_streams(tasks, &parts).await?;
        }
        if settings.archive.enabled {
            spawn_archives(tasks, &parts);
        }
        spawn_contract_watch(tasks, &health, cancel);
        if !polling {
            warn!(
                event = "idle",
                "jmafile.enabled and archive.enabled are both false: only queued downloads will run"
            );
        }
        spawn_workers(tasks, &settings, &downloader, cancel);
        Ok(())
    }
}

/// What the pollers are made of.
struct Parts<'a> {
    settings: &'a Settings,
    store: &'a Store,
    client: &'a Arc<Client>,
    health: &'a Arc<Health>,
    wake: &'a Arc<Notify>,
    cancel: &'a CancellationToken,
}

/// Binds `server.listen`, if set.
async fn bind(settings: &Settings) -> Result<Option<tokio::net::TcpListener>, RunError> {
    let Some(addr) = settings.server.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        ConfigError::invalid("server.listen", format!("cannot listen on {addr}: {e}"))
    })?;
    Ok(Some(listener))
}

fn log_started(settings: &Settings) {
    info!(
        event = "started",
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %settings.storage.data_dir.display(),
        database = %settings.storage.database_shown(),
        base_url = %settings.api.base_url,
        types = ?settings.jmafile.types,
        archives = settings.archive.enabled,
        workers = settings.download.concurrency,
        "jma-poller started"
    );
}

/// Contends for `role` for as long as the daemon runs; returns this node's view of it.
fn spawn_lease(
    tasks: &mut JoinSet<Result<(), RunError>>,
    role: &'static str,
    settings: &Settings,
    store: &Store,
    health: &Arc<Health>,
    cancel: &CancellationToken,
) -> Arc<RoleLease> {
    let lease = RoleLease::new(role);
    let (l, st, h, c) = (lease.clone(), store.clone(), health.clone(), cancel.clone());
    let length = settings.cluster.lease;
    tasks.spawn(async move {
        crate::cluster::keep_lease(st, l, length, h, c).await;
        Ok(())
    });
    lease
}

/// One PuLL task per planned stream, sharing one pacing, each running only while this node
/// leads jmafile.
async fn spawn_streams(
    tasks: &mut JoinSet<Result<(), RunError>>,
    parts: &Parts<'_>,
) -> Result<(), RunError> {
    let settings = parts.settings;
    let plan = plan_streams(settings, parts.store).await?;
    let lease = spawn_lease(
        tasks,
        crate::cluster::ROLE_JMAFILE,
        settings,
        parts.store,
        parts.health,
        parts.cancel,
    );
    // One pacing for every stream: together they stay below 2 list calls per second.
    let pacer = Arc::new(crate::poll::jmafile::list_pacer());
    for stream in plan.streams {
        parts.health.register_stream(&stream.name);
        parts.health.expect_contract(&stream.name);
        let (client, store, jmafile) = (
            parts.client.clone(),
            parts.store.clone(),
            settings.jmafile.clone(),
        );
        let (pacer, wake, health, l) = (
            pacer.clone(),
            parts.wake.clone(),
            parts.health.clone(),
            lease.clone(),
        );
        let (max_size, retention) = (
            settings.download.max_size.as_u64(),
            settings.storage.retention,
        );
        tasks.spawn(crate::cluster::while_leading(
            lease.clone(),
            parts.cancel.clone(),
            move |c| {
                let poller = JmaFilePoller::new(
                    client.clone(),
                    store.clone(),
                    jmafile.clone(),
                    stream.clone(),
                    pacer.clone(),
                    max_size,
                    retention,
                    wake.clone(),
                    health.clone(),
                )
                .with_lease(l.clone());
                let h = health.clone();
                async move {
                    crate::poll::runner::run(poller, h, c)
                        .await
                        .map_err(RunError::Auth)
                }
            },
        ));
    }
    Ok(())
}

/// The daily archive task, running only while this node leads archives.
fn spawn_archives(tasks: &mut JoinSet<Result<(), RunError>>, parts: &Parts<'_>) {
    let settings = parts.settings;
    for unit in crate::poll::archive::contract_units(&settings.archive) {
        parts.health.expect_contract(&unit);
    }
    let lease = spawn_lease(
        tasks,
        crate::cluster::ROLE_ARCHIVE,
        settings,
        parts.store,
        parts.health,
        parts.cancel,
    );
    let (client, store, archive) = (
        parts.client.clone(),
        parts.store.clone(),
        settings.archive.clone(),
    );
    let (retention, wake, health, l) = (
        settings.storage.retention,
        parts.wake.clone(),
        parts.health.clone(),
        lease.clone(),
    );
    tasks.spawn(crate::cluster::while_leading(
        lease,
        parts.cancel.clone(),
        move |c| {
            let poller = ArchivePoller::new(
                client.clone(),
                store.clone(),
                archive.clone(),
                retention,
                wake.clone(),
                health.clone(),
            )
            .with_lease(l.clone());
            let h = health.clone();
            async move {
                crate::poll::runner::run(poller, h, c)
                    .await
                    .map_err(RunError::Auth)
            }
        },
    ));
}

/// Refused by the contract everywhere before anything was covered: nothing to do, and
/// restarting will not change that.
fn spawn_contract_watch(
    tasks: &mut JoinSet<Result<(), RunError>>,
    health: &Arc<Health>,
    cancel: &CancellationToken,
) {
    let (h, c) = (health.clone(), cancel.clone());
    tasks.spawn(async move {
        tokio::select! {
            _ = c.cancelled() => Ok(()),
            refusals = h.refused_everywhere() => Err(RunError::NoContract(refusals)),
        }
    });
}

/// The download workers. With archives on, one worker stays with the live stream, so a day's
/// tarball can never hold every worker while fresh jmafile items wait.
fn spawn_workers(
    tasks: &mut JoinSet<Result<(), RunError>>,
    settings: &Settings,
    downloader: &Arc<Downloader>,
    cancel: &CancellationToken,
) {
    for worker in 0..settings.download.concurrency {
        let claim = if worker == 0
            && settings.archive.enabled
            && settings.jmafile.enabled
            && settings.download.concurrency > 1
        {
            Claim::JmafileOnly
        } else {
            Claim::Any
        };
        let d = downloader.clone();
        let c = cancel.clone();
        tasks.spawn(async move {
            d.run_worker(claim, c).await;
            Ok(())
        });
    }
}

/// Until shutdown, or the first task that ends with an error (or panics).
async fn wait_for_stop(
    tasks: &mut JoinSet<Result<(), RunError>>,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            joined = tasks.join_next() => match joined {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(RunError::Task(e.to_string())),
            }
        }
    }
}

/// Waits up to [`SHUTDOWN_GRACE`] for the (cancelled) tasks, then closes the database.
async fn stop(mut tasks: JoinSet<Result<(), RunError>>, store: Store) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!(
        event = "stopping",
        "stopping: finishing or rolling back work in flight"
    );
    let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = &mut deadline => {
                error!(event = "shutdown_timeout", tasks = tasks.len(), "some tasks did not stop in time; leaving them (their items will be retried on the next start)");
                tasks.abort_all();
                break;
            }
        }
    }
    // Closing only checkpoints the WAL: every commit is on disk already. A connection still
    // held (by a task aborted above, or a pool that never hands it back) would make the close
    // wait forever, and a daemon that ignores SIGTERM gets SIGKILLed by systemd or Docker.
    if tokio::time::timeout(CLOSE_GRACE, store.close())
        .await
        .is_err()
    {
        warn!(
            event = "db_close_timeout",
            "the database did not close within {}s; exiting anyway (every commit is already on disk)",
            CLOSE_GRACE.as_secs()
        );
    }
}
