//! The real binary on PostgreSQL (`storage.database = "postgres://…"`, a throwaway server from
//! `jma_poller::testing::pg`) against the simulator: `kill -9` at random moments, then a clean
//! run: every item lands exactly once with the right bytes, no SQLite file is made, an item
//! once done is never fetched again across a restart, and `status` reads the same database.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use jma_poller::sim::{ItemSpec, Kind};
use jma_poller::state::Store;
use jma_poller::state::prelude::*;
use jma_poller::testing::pg::PgServer;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_kill_9_and_restart_land_everything_once_and_fetch_nothing_twice() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.create_database().await;
    let sim = sim(100).await;
    let env = Env::new();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let spec = |rng: &mut fastrand::Rng| ItemSpec {
        kind: match rng.u8(..3) {
            0 => Kind::Plain,
            1 => Kind::Concat { children: 3 },
            _ => Kind::Gzip,
        },
        size: if rng.u8(..5) == 0 {
            rng.usize(500_000..2_000_000)
        } else {
            rng.usize(500..40_000)
        },
        ..ItemSpec::default()
    };
    let mut items: Vec<_> = (0..20).map(|_| sim.add(spec(&mut rng))).collect();
    let log = env.root.path().join("daemon.log");
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__STORAGE__DATABASE".into(), url.clone()));
    // On PostgreSQL a restarted node waits out its killed predecessor's registration and role
    // leases (no data-dir lock proves it gone): the shortest lease keeps that wait short.
    envs.push(("JMA_POLLER__CLUSTER__LEASE".into(), "3s".into()));
    let kills = 5;
    for round in 0..kills {
        let mut child = spawn_bin(&["run"], &envs, &log);
        for _ in 0..rng.usize(0..4) {
            items.push(sim.add(spec(&mut rng)));
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        let status = child.kill9();
        assert!(status.code().is_none(), "round {round}: killed by signal");
    }

    // A clean run lands everything; then kill -9 once more, with nothing in flight.
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(90),
        "everything lands after the kills",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    child.kill9();
    let before: HashMap<String, usize> = fetches(&sim);
    let old = items.len();

    // The restart resumes from the database: new items land, nothing done is fetched again.
    for _ in 0..5 {
        items.push(sim.add(spec(&mut rng)));
    }
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(90),
        "the new items land after the restart",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let after = fetches(&sim);
    for item in &items[..old] {
        assert_eq!(
            after.get(&item.id),
            before.get(&item.id),
            "{}: done before the restart, never fetched again",
            item.id
        );
    }
    for item in &items[old..] {
        assert!(after.get(&item.id).is_some_and(|n| *n >= 1), "{}", item.id);
    }

    assert_all_landed(&env.data_dir, &items);
    assert!(
        tmp_leftovers(&env.data_dir).is_empty(),
        "no stray temp files"
    );
    let mut expected: Vec<String> = items
        .iter()
        .flat_map(|i| i.expected.iter().map(|f| f.rel_path.clone()))
        .collect();
    expected.sort();
    assert_eq!(
        files_under(&env.data_dir),
        expected,
        "exactly one copy of each file, nothing else"
    );
    assert!(
        !env.data_dir.join("state.sqlite").exists(),
        "the state lives in PostgreSQL, not in a SQLite file"
    );

    // A body is fetched again only when a kill interrupted it (at most one per worker per
    // kill) or the daemon logged a retry.
    let total: usize = after.values().sum();
    let workers = 2;
    let retries = std::fs::read_to_string(&log)
        .unwrap()
        .matches("\"event\":\"retry\"")
        .count();
    assert!(
        total <= items.len() + kills * workers + retries,
        "{total} body requests for {} items, {kills} kills and {retries} logged retries",
        items.len()
    );

    // The database agrees with the disk, and `status` reads it.
    let target = jma_poller::state::postgres::PgTarget::parse(&url, None).unwrap();
    let store = Store::open_read_only(target).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let done = store.done_paths().await.unwrap();
    assert_eq!(done.len(), items.len(), "one done row per item");
    store.close().await;
    let out = Command::new(bin())
        .args(["status", "--json"])
        .env(
            "JMA_POLLER__STORAGE__DATA_DIR",
            env.data_dir.display().to_string(),
        )
        .env("JMA_POLLER__STORAGE__DATABASE", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = v["counts"].as_array().unwrap();
    assert_eq!(counts.len(), 1, "only done items: {counts:?}");
    assert_eq!(counts[0]["items"].as_i64(), Some(items.len() as i64));
}

/// A malformed `storage.database` URL fails the start naming the setting (exit 2); a server
/// that does not answer fails it naming host:port, without the password.
#[test]
fn a_bad_database_url_or_an_unreachable_server_fails_the_start_clearly() {
    let env = Env::new();
    let data = env.data_dir.display().to_string();
    let run = |url: &str| {
        Command::new(bin())
            .arg("run")
            .env("JMA_POLLER__API__KEY", "k")
            .env("JMA_POLLER__STORAGE__DATA_DIR", &data)
            .env("JMA_POLLER__STORAGE__DATABASE", url)
            .output()
            .unwrap()
    };
    let out = run("postgres://poller:pw@/db");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("storage.database"), "{err}");
    assert!(!err.contains(":pw@"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(&format!(
        "postgres://poller:hunter2@127.0.0.1:{port}/db?sslmode=disable"
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// The password from a systemd credential (`$CREDENTIALS_DIRECTORY/database_password`), as the
/// API key's: `status` connects as a role that must give it; without the credential the start
/// fails naming host:port, and the password shows nowhere.
#[tokio::test]
async fn the_database_password_comes_from_a_systemd_credential() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.create_password_role("cred-pw-1").await;
    let target = jma_poller::state::postgres::PgTarget::parse(&url, Some("cred-pw-1")).unwrap();
    Store::open(target).await.unwrap().close().await;
    let env = Env::new();
    let creds = env.root.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("database_password"), "cred-pw-1\n").unwrap();
    let status = |with_credential: bool| {
        let mut c = Command::new(bin());
        c.arg("status")
            .env(
                "JMA_POLLER__STORAGE__DATA_DIR",
                env.data_dir.display().to_string(),
            )
            .env("JMA_POLLER__STORAGE__DATABASE", &url)
            .env_remove("CREDENTIALS_DIRECTORY");
        if with_credential {
            c.env("CREDENTIALS_DIRECTORY", &creds);
        }
        c.output().unwrap()
    };
    let out = status(true);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("database: postgres://pwuser@127.0.0.1"),
        "{text}"
    );
    assert!(!text.contains("cred-pw-1"), "{text}");
    let out = status(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", pg.port())), "{err}");
    assert!(!err.contains("cred-pw-1"), "{err}");
}
