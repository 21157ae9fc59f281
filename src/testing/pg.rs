//! A throwaway PostgreSQL server for tests, from the distribution's binaries: `initdb` in a
//! temp dir, `pg_ctl start` on a free port of 127.0.0.1 (socket in the same dir), one database
//! per test, `pg_ctl stop -m immediate` when dropped.
//!
//! `initdb` refuses to run as root, and CI runs as root: then the server runs as `nobody` (the
//! temp dir handed to it), through `runuser`.
//!
//! Where the binaries are missing, [`PgServer::start`] prints one line saying why and returns
//! `None`, and the test returns; under CI (`CI` set) that is a failure instead, since `.ci/run`
//! installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection;

use crate::state::postgres::PgTarget;

/// A running server, stopped (immediately) and deleted when dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as when we are root.
    user: Option<String>,
}

/// Where `initdb` and `pg_ctl` are: on PATH, or Debian's versioned directory (newest first).
fn find_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    debian.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    on_path
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .map(|dir| std::fs::canonicalize(dir.join("initdb")).map_or(dir, |p| p.with_file_name("")))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The unprivileged user a root test runs the server as: `nobody`, created (a system user
/// without a home) in the rare image that lacks it.
fn server_user() -> String {
    const USER: &str = "nobody";
    let exists = Command::new("id")
        .args(["-u", USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            made,
            "initdb refuses root, and user {USER} neither exists nor can be made"
        );
    }
    USER.to_owned()
}

/// A port nobody listens on right now (the server may lose a race for it: start retries).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The role that must give a password (scram-sha-256); every other role is trusted.
pub const PASSWORD_ROLE: &str = "pwuser";

impl PgServer {
    /// Starts a server, or says why it cannot (see the module doc).
    pub fn start() -> Option<PgServer> {
        PgServer::start_with(None)
    }

    /// Starts a server that also speaks TLS with this certificate and key (PEM).
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Option<PgServer> {
        PgServer::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<PgServer> {
        let Some(bin) = find_binaries() else {
            let why = "skipping: PostgreSQL binaries (initdb, pg_ctl) not found; \
                       apt-get install postgresql";
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the PostgreSQL tests: {why}"
            );
            println!("{why}");
            return None;
        };
        let user = is_root().then(server_user);
        // As root, in /tmp: the server's user must be able to reach the directory, and a
        // TMPDIR of root's own (0700) would not let it.
        let parent = match &user {
            Some(_) if Path::new("/tmp").is_dir() => PathBuf::from("/tmp"),
            _ => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("jma-pg-")
            .tempdir_in(parent)
            .expect("temp dir for PostgreSQL");
        let server = PgServer {
            dir,
            bin,
            port: 0,
            user,
        };
        server.hand_over(server.dir.path());
        server.initdb();
        server.write_hba();
        let mut extra = String::new();
        if let Some((cert, key)) = tls {
            let (c, k) = (
                server.dir.path().join("server.crt"),
                server.dir.path().join("server.key"),
            );
            std::fs::write(&c, cert).expect("write the server certificate");
            std::fs::write(&k, key).expect("write the server key");
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("key mode");
            server.hand_over(&c);
            server.hand_over(&k);
            extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.display(),
                k.display()
            );
        }
        let mut server = server;
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port().expect("a free port");
            match server.pg_ctl_start(&extra) {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// Gives `path` to the server's user (when we are root).
    fn hand_over(&self, path: &Path) {
        let Some(user) = &self.user else {
            return;
        };
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(path)
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown {user} {}", path.display());
    }

    /// A command running `tool` as the server's user.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.user {
            None => Command::new(exe),
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(self.data())
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Trust for everyone but [`PASSWORD_ROLE`], which must give its password.
    fn write_hba(&self) {
        let hba = format!(
            "local all all trust\n\
             host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(self.data().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn pg_ctl_start(&self, extra: &str) -> Result<(), String> {
        // fsync off: the tests kill the daemon, not the machine; a killed server (stop -m
        // immediate) still finds every commit in the OS's cache.
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{extra}",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        Err(format!(
            "{}{}{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediately(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts the server again on the same port and data after [`PgServer::stop_immediately`]
    /// (crash recovery runs as after a real crash).
    pub fn start_again(&self) {
        if let Err(e) = self.pg_ctl_start("") {
            panic!("PostgreSQL did not start again: {e}");
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A new, empty database; returns its URL.
    pub async fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test server");
        // `name` is ours (t0, t1, …), never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        admin.close().await.ok();
        self.url(&name)
    }

    /// Creates [`PASSWORD_ROLE`] with `password`, owner of a new database; returns that
    /// database's URL without the password.
    pub async fn create_password_role(&self, password: &str) -> String {
        let url = self.create_database().await;
        let db = url
            .rsplit('/')
            .next()
            .and_then(|tail| tail.split('?').next())
            .expect("test URL has a database")
            .to_owned();
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test server");
        // Both names are ours and the password a test's constant, never input.
        let sql = format!(
            "CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{}'; ALTER DATABASE {db} OWNER TO {PASSWORD_ROLE}",
            password.replace('\'', "''")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("create the password role");
        admin.close().await.ok();
        url.replace("postgres@", &format!("{PASSWORD_ROLE}@"))
    }

    /// A new, empty database, as a store target.
    pub async fn target(&self) -> PgTarget {
        PgTarget::parse(&self.create_database().await, None).expect("test URL parses")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}
