//! Shared helpers: a simulator on 127.0.0.1:0, a temp data dir with a real SQLite file, and the
//! real daemon, either in-process (`app::run`) or as the real binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jma_poller::config::{Secret, Settings};
use jma_poller::sim::{Sim, SimConfig, SimItem};
use jma_poller::state::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A simulator tuned for tests: short PuLL interval, no rate limits unless asked.
pub async fn sim(interval_ms: u64) -> Sim {
    init_logs();
    Sim::start(SimConfig {
        pooling_interval_ms: interval_ms,
        data_limit: None,
        api_limit: None,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// `download.refetch_delay` in tests: the 60 s default scaled down below the retry backoff
/// (1–2 s), so retries and restarts come as soon as they did before the hold existed while
/// every path still goes through it. Tests of the hold itself set their own.
pub const TEST_REFETCH_DELAY: Duration = Duration::from_millis(250);

pub struct Env {
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    _watchdog: Watchdog,
}

impl Env {
    pub fn new() -> Env {
        let mut root = tempfile::tempdir().unwrap();
        // JMA_TEST_KEEP=1 keeps every test's folder (logs, data, database) to look at after.
        if std::env::var_os("JMA_TEST_KEEP").is_some() {
            root.disable_cleanup(true);
            eprintln!("keeping {}", root.path().display());
        }
        let data_dir = root.path().join("data");
        let watchdog = Watchdog::arm(root.path().to_owned());
        Env {
            root,
            data_dir,
            _watchdog: watchdog,
        }
    }

    pub fn settings(&self, sim: &Sim) -> Settings {
        let mut s = Settings::default();
        s.api.base_url = sim.base_url().parse().unwrap();
        s.api.key = Some(Secret::new(sim.key()));
        s.storage.data_dir = self.data_dir.clone();
        s.limits.data_requests = 0;
        s.download.read_timeout = Duration::from_secs(3);
        s.download.refetch_delay = TEST_REFETCH_DELAY;
        s
    }

    pub async fn store(&self) -> Store {
        Store::open_read_only(&self.data_dir.join("state.sqlite"))
            .await
            .unwrap()
    }

    /// Environment for the real binary, equivalent to [`Env::settings`].
    pub fn binary_env(&self, sim: &Sim) -> Vec<(String, String)> {
        vec![
            ("JMA_POLLER__API__BASE_URL".into(), sim.base_url()),
            ("JMA_POLLER__API__KEY".into(), sim.key()),
            (
                "JMA_POLLER__STORAGE__DATA_DIR".into(),
                self.data_dir.display().to_string(),
            ),
            ("JMA_POLLER__LIMITS__DATA_REQUESTS".into(), "0".into()),
            ("JMA_POLLER__DOWNLOAD__READ_TIMEOUT".into(), "3s".into()),
            (
                "JMA_POLLER__DOWNLOAD__REFETCH_DELAY".into(),
                humantime::format_duration(TEST_REFETCH_DELAY).to_string(),
            ),
            ("JMA_POLLER__LOG__FORMAT".into(), "json".into()),
        ]
    }
}

/// Ends the whole test run, loudly, if one test is still going long after any test should
/// have finished: a hang must fail CI in minutes with a clue, not use up its time limit in
/// silence. Every integration test makes an [`Env`], which arms one of these; dropping the
/// `Env` disarms it. On expiry it writes (straight to stderr, past the test harness's output
/// capture) the test's name, every thread's stack of this process and of its children (when
/// gdb is installed), and the end of each log in the test's folder, then aborts.
struct Watchdog {
    /// Dropped with the `Env`, which ends the watch.
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// `JMA_TEST_WATCHDOG` (seconds) overrides the limit; 0 turns it off.
    fn arm(root: PathBuf) -> Watchdog {
        let secs: u64 = std::env::var("JMA_TEST_WATCHDOG")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        if secs == 0 {
            return Watchdog { _disarm: tx };
        }
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_owned();
        std::thread::spawn(move || {
            // The sender dropped (the test ended) ends the watch.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_secs(secs))
            {
                report_hang(&test, secs, &root);
                // Daemons this test started would outlive the abort: end them first.
                for pid in children() {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                std::process::abort();
            }
        });
        Watchdog { _disarm: tx }
    }
}

/// The pids of this process's children (the daemons its tests started).
fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", std::process::id())) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    pids
}

fn report_hang(test: &str, secs: u64, root: &Path) {
    use std::io::Write;
    let mut out = format!(
        "\n\n=== WATCHDOG: test {test} still running after {secs} s; aborting the test run ===\n"
    );
    let mut pids = vec![std::process::id()];
    pids.extend(children());
    for &pid in &pids {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        out.push_str(&format!("\n--- stacks of {pid}: {cmdline}\n"));
        match Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => out.push_str(&String::from_utf8_lossy(&o.stdout)),
            Err(e) => out.push_str(&format!("(no stacks: gdb: {e})\n")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "log") {
                out.push_str(&format!(
                    "\n--- last lines of {}\n{}\n",
                    path.display(),
                    log_tail(&path, 40)
                ));
            }
        }
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// The last `n` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The daemon running in this process.
pub struct Daemon {
    pub cancel: CancellationToken,
    pub handle: JoinHandle<Result<(), jma_poller::app::RunError>>,
}

impl Daemon {
    pub fn start(settings: Settings) -> Daemon {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(jma_poller::app::run(settings, cancel.clone()));
        Daemon { cancel, handle }
    }

    /// Builds the daemon serving `/healthz`, `/readyz` and `/metrics` on a port the system
    /// picks, starts it, and returns the address it really listens on.
    pub async fn serve(mut settings: Settings) -> (Daemon, std::net::SocketAddr) {
        settings.server.listen = Some("127.0.0.1:0".parse().unwrap());
        let app = jma_poller::app::Application::build(settings)
            .await
            .expect("the daemon builds");
        let addr = app.local_addr().expect("server.listen is set");
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(cancel.clone()));
        (Daemon { cancel, handle }, addr)
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("daemon stops within 10 s")
            .expect("daemon task did not panic");
        r.expect("daemon stopped without error");
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jma-poller"))
}

/// How long a daemon may take to stop after SIGTERM or SIGINT in a test: its own grace for
/// work in flight is 8 s; the rest is room for a loaded CI machine.
pub const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A child process that is killed if the test lets go of it still running (e.g. a failed
/// assertion), so no daemon outlives its test.
pub struct Proc {
    child: Child,
    /// Where its stdout and stderr go: quoted when it does not exit in time.
    log: PathBuf,
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Wraps a child whose stdout and stderr go to `log`.
    pub fn new(child: Child, log: &Path) -> Proc {
        Proc {
            child,
            log: log.to_owned(),
        }
    }

    /// Sends `sig` and waits for the exit, for at most `limit`. A process still running then
    /// is a failure of the test (the daemon promises to stop within seconds), not a reason to
    /// wait forever: it is killed and the test panics with the end of its log. Waiting by
    /// polling keeps the test's runtime, and so the simulator, serving meanwhile.
    pub async fn stop(&mut self, sig: &str, limit: Duration) -> std::process::ExitStatus {
        signal(&self.child, sig);
        self.exit_within(limit, sig).await
    }

    /// Waits for a process that ends by itself (a one-shot command), for at most `limit`.
    pub async fn exit_within(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "process {} still running {limit:?} after {what}; killed. Last log lines:\n{}",
                    self.child.id(),
                    log_tail(&self.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `sig` ("-STOP", "-CONT", …) without waiting for anything.
    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    /// Still running (not exited)?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then the exit status (the kernel ends a killed process without its help).
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        signal(&self.child, "-KILL");
        self.child.wait().expect("wait for the killed child")
    }
}

/// Variables of the test's own environment that would change where the binary connects or
/// whom it trusts: each test sets the ones it means (`tls.rs`).
const NETWORK_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// The real binary with `args`, environment `env`, output appended to `log`.
pub fn spawn_bin(args: &[&str], env: &[(String, String)], log: &Path) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let err = out.try_clone().unwrap();
    let mut command = Command::new(bin());
    command.args(args).env_remove("RUST_LOG");
    for var in NETWORK_ENV {
        command.env_remove(var);
    }
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map(|child| Proc {
            child,
            log: log.to_owned(),
        })
        .expect("binary starts")
}

/// Waits until `check` is true, polling every 50 ms; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True if every expected file of `item` is on disk with the right bytes.
pub fn landed(data_dir: &Path, item: &SimItem) -> bool {
    item.expected
        .iter()
        .all(|f| std::fs::read(data_dir.join(&f.rel_path)).is_ok_and(|b| b == f.bytes.as_ref()))
}

pub fn all_landed(data_dir: &Path, items: &[SimItem]) -> bool {
    items.iter().all(|i| landed(data_dir, i))
}

/// Panics, naming the item, unless every file of every item is there with the right bytes.
pub fn assert_all_landed(data_dir: &Path, items: &[SimItem]) {
    for item in items {
        for f in &item.expected {
            let p = data_dir.join(&f.rel_path);
            let got = std::fs::read(&p)
                .unwrap_or_else(|e| panic!("serial {}: {} missing: {e}", item.serial, p.display()));
            assert!(
                got == f.bytes.as_ref(),
                "serial {}: {} has wrong bytes ({} vs {})",
                item.serial,
                p.display(),
                got.len(),
                f.bytes.len()
            );
        }
    }
}

/// Body requests per item id, as the simulator saw them.
pub fn fetches(sim: &Sim) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in sim.requests() {
        if let Some(id) = r.id {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// Every regular file under `dir`, relative, except the database and the lock.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.retain(|f| !f.starts_with("state.sqlite") && f != ".lock");
    out.sort();
    out
}

/// Files left in `.tmp/` (there must be none after a clean stop).
pub fn tmp_leftovers(data_dir: &Path) -> Vec<String> {
    files_under(&data_dir.join(".tmp"))
}

/// Sends `sig` (as `kill` spells it: "-TERM", "-KILL", …) to a spawned daemon.
pub fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill");
}
