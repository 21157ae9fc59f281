//! The suite's PostgreSQL backend (`PERF_DATABASE=postgres`): one throwaway server for the whole
//! run from the distribution's binaries, a fresh database per daemon run, and the server's own
//! CPU read from `/proc` (the postmaster with its reaped children, plus every live child).
//!
//! Not `jma_poller::testing::pg::PgServer`: that one runs with `fsync=off` on its command line
//! (the tests kill the daemon, not the machine), which no `ALTER SYSTEM` can undo, and a
//! benchmark against SQLite at full durability must pay for PostgreSQL's fsyncs too. Started the
//! same way otherwise: `initdb` refuses root, so as root the server runs as `nobody` through
//! `runuser`. Its data lives under `target/bench/` on the project's disk, as SQLite's does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::Connection;

pub struct PgBench {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<String>,
    postmaster: u32,
    next_db: usize,
    /// `fsync` and `synchronous_commit` as the server reports them, for the report.
    pub settings: String,
}

/// Where `initdb`, `pg_ctl` and `postgres` are: on PATH, or Debian's versioned directory.
fn find_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    debian.sort();
    debian.reverse();
    on_path
        .chain(debian)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .map(|d| std::fs::canonicalize(d.join("initdb")).map_or(d, |p| p.with_file_name("")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// utime + stime (+ cutime + cstime when `children`) and the parent pid of a process.
fn stat(pid: u32) -> Option<(u64, u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    Some((n(11)? + n(12)?, n(13)? + n(14)?, n(1)? as u32))
}

impl PgBench {
    /// Starts the server under `dir` (made afresh), or exits saying why it cannot.
    pub fn start(dir: &Path, rt: &tokio::runtime::Runtime) -> PgBench {
        let Some(bin) = find_binaries() else {
            eprintln!("PERF_DATABASE=postgres needs initdb and pg_ctl: apt-get install postgresql");
            std::process::exit(2);
        };
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("PostgreSQL dir");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut pg = PgBench {
            dir: dir.to_owned(),
            bin,
            port: free_port(),
            user: root.then(|| "nobody".to_owned()),
            postmaster: 0,
            next_db: 0,
            settings: String::new(),
        };
        if let Some(user) = &pg.user {
            pg.run(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{user}:"))
                    .arg(dir),
            );
        }
        let data = dir.join("data");
        let mut initdb = pg.command("initdb");
        initdb
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data);
        pg.run(&mut initdb);
        // Durable like the daemon's SQLite (synchronous=FULL): fsync and synchronous_commit on,
        // the defaults, said again so that no environment default changes them.
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=200",
            pg.port,
            dir.display()
        );
        let mut start = pg.command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-w", "-t", "60", "-l"])
            .arg(dir.join("server.log"))
            .arg("start");
        pg.run(&mut start);
        let url = pg.url("postgres");
        let (backend, settings): (i32, String) = rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&url)
                .await
                .expect("connect to the bench server");
            let row = sqlx::query_as(
                "SELECT pg_backend_pid(), 'PostgreSQL ' || current_setting('server_version') \
                 || ', fsync=' || current_setting('fsync') \
                 || ', synchronous_commit=' || current_setting('synchronous_commit') \
                 || ', shared_buffers=' || current_setting('shared_buffers')",
            )
            .fetch_one(&mut c)
            .await
            .expect("server settings");
            c.close().await.ok();
            row
        });
        pg.postmaster = stat(backend as u32).expect("backend's /proc stat").2;
        pg.settings = settings;
        pg
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut c = match &self.user {
            None => Command::new(exe),
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
        };
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A new, empty database; returns its URL.
    pub fn create_database(&mut self, rt: &tokio::runtime::Runtime) -> String {
        self.next_db += 1;
        let name = format!("bench{}", self.next_db);
        let admin = self.url("postgres");
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&admin).await.expect("connect");
            // `name` is ours (bench1, bench2, …), never input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut c)
                .await
                .expect("create a bench database");
            c.close().await.ok();
        });
        self.url(&name)
    }

    /// CPU seconds the server has used since it started: the postmaster's own and its reaped
    /// children's (backends of closed connections), plus each live child's.
    pub fn cpu_s(&self, tck: f64) -> f64 {
        let Some((own, reaped, _)) = stat(self.postmaster) else {
            return f64::NAN;
        };
        let live: u64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(stat)
            .filter(|s| s.2 == self.postmaster)
            .map(|s| s.0 + s.1)
            .sum();
        (own + reaped + live) as f64 / tck
    }

    /// Stops the server (fast: it is the suite's own) and removes its files.
    fn stop(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The largest `listed_ms` and the database's size in bytes.
pub async fn listed_and_size(url: &str) -> (i64, i64) {
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    let v =
        sqlx::query_as("SELECT MAX(listed_ms), pg_database_size(current_database()) FROM items")
            .fetch_one(&mut c)
            .await
            .expect("max listed");
    c.close().await.ok();
    v
}

impl Drop for PgBench {
    /// Also when a scenario panics: no server outlives the suite.
    fn drop(&mut self) {
        self.stop();
    }
}
