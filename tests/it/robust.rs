//! Robustness: a soak under every fault at once with kill -9, a full disk, database trouble,
//! wall-clock jumps, and peers that hang.

use jma_poller::state::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::process::Command;
use std::time::{Duration, Instant};

use jma_poller::sim::{DataFault, ItemSpec, Kind, ListFault, RandomFaults, SimItem};
use jma_poller::state::{Claim, Cursor, Source, Store, now_ms};
use sqlx::Connection;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_all_faults_with_kill_9_every_few_seconds() {
    let sim = sim(100).await;
    let env = Env::new();
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("SOAK_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // Good items stay under the 2 MiB cap (concat sizes are per child).
    let spec = |rng: &mut fastrand::Rng| {
        let kind = match rng.u8(..6) {
            0 => Kind::Plain,
            1 => Kind::Zip,
            2 => Kind::Concat {
                children: rng.usize(2..5),
            },
            _ => Kind::Gzip,
        };
        let big = !matches!(kind, Kind::Concat { .. }) && rng.u8(..40) == 0;
        ItemSpec {
            kind,
            size: if big {
                rng.usize(500_000..1_500_000)
            } else {
                rng.usize(300..30_000)
            },
            ..ItemSpec::default()
        }
    };
    let mut good: Vec<SimItem> = Vec::new();
    // Bad items and the reason each must be failed with.
    let mut bad: Vec<(SimItem, &str)> = Vec::new();
    let add_bad = |sim: &jma_poller::sim::Sim,
                   rng: &mut fastrand::Rng,
                   bad: &mut Vec<(SimItem, &'static str)>| {
        match rng.u8(..4) {
            0 => bad.push((
                sim.add(ItemSpec {
                    kind: Kind::Plain,
                    filename: Some(format!("../escape{}.bin", rng.u32(..))),
                    ..ItemSpec::default()
                }),
                "unsafe name",
            )),
            1 => bad.push((
                sim.add(ItemSpec {
                    url_origin: Some(format!("http://localhost:{}", sim.addr().port())),
                    ..ItemSpec::default()
                }),
                "untrusted host",
            )),
            2 => {
                let item = sim.add(ItemSpec::default());
                sim.faults().data_for.insert(
                    item.id.clone(),
                    std::iter::repeat_n(DataFault::Status(404), 100).collect::<VecDeque<_>>(),
                );
                bad.push((item, "404"));
            }
            _ => bad.push((
                sim.add(ItemSpec {
                    kind: Kind::Gzip,
                    size: 3 << 20,
                    ..ItemSpec::default()
                }),
                "max_size",
            )),
        }
    };
    for _ in 0..300 {
        good.push(sim.add(spec(&mut rng)));
    }
    sim.faults().random = Some(RandomFaults {
        list_5xx: 0.05,
        list_429: 0.02,
        data_5xx: 0.04,
        data_429: 0.02,
        truncate: 0.03,
        corrupt: 0.03,
        stall: 0.01,
        expire_tokens: 0.03,
    });
    let log = env.root.path().join("daemon.log");
    let mut envs = env.binary_env(&sim);
    envs.extend([
        (
            "JMA_POLLER__DOWNLOAD__READ_TIMEOUT".to_owned(),
            "2s".to_owned(),
        ),
        (
            "JMA_POLLER__DOWNLOAD__MAX_ATTEMPTS".to_owned(),
            "30".to_owned(),
        ),
        (
            "JMA_POLLER__DOWNLOAD__CONCURRENCY".to_owned(),
            "4".to_owned(),
        ),
        (
            "JMA_POLLER__DOWNLOAD__MAX_SIZE".to_owned(),
            "2 MiB".to_owned(),
        ),
    ]);
    let rounds = 14;
    for _ in 0..rounds {
        let mut child = spawn_bin(&["run"], &envs, &log);
        let round_start = Instant::now();
        let stay = Duration::from_millis(rng.u64(1500..3500));
        while round_start.elapsed() < stay {
            for _ in 0..rng.usize(10..40) {
                good.push(sim.add(spec(&mut rng)));
            }
            if rng.u8(..3) == 0 {
                add_bad(&sim, &mut rng, &mut bad);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        child.kill9();
    }
    sim.faults().random = None;

    // A last run without faults or kills until every item is resolved, then a clean stop.
    let mut child = spawn_bin(&["run"], &envs, &log);
    let store_path = env.data_dir.join("state.sqlite");
    let total = good.len() + bad.len();
    wait_until(
        Duration::from_secs(240),
        "every item is done or failed",
        || async {
            let Ok(store) = Store::open_read_only(&store_path).await else {
                return false;
            };
            let report = store.status().await;
            store.close().await;
            report.is_ok_and(|r| {
                let finished: i64 = r
                    .counts
                    .iter()
                    .filter(|c| c.state == "done" || c.state == "failed")
                    .map(|c| c.items)
                    .sum();
                let all: i64 = r.counts.iter().map(|c| c.items).sum();
                all == total as i64 && finished == all
            })
        },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));

    // Every good item exactly once with the right bytes; nothing else on disk. On failure,
    // say what the database and the disk hold for each offending item.
    let store = env.store().await;
    let mut wrong = Vec::new();
    for item in &good {
        if !landed(&env.data_dir, item) {
            let row = store.item_state(Source::Jmafile, &item.id).await.unwrap();
            let disk: Vec<String> = item
                .expected
                .iter()
                .map(|f| match std::fs::read(env.data_dir.join(&f.rel_path)) {
                    Ok(b) if b == f.bytes.as_ref() => format!("{} ok", f.rel_path),
                    Ok(b) => format!(
                        "{} WRONG {} bytes (expected {})",
                        f.rel_path,
                        b.len(),
                        f.bytes.len()
                    ),
                    Err(e) => format!("{} {e}", f.rel_path),
                })
                .collect();
            let fetched = fetches(&sim).get(&item.id).copied().unwrap_or(0);
            wrong.push(format!(
                "serial {} kind {:?} fetched {fetched}x row {row:?} disk {disk:?}",
                item.serial, item.format
            ));
        }
    }
    store.close().await;
    assert!(
        wrong.is_empty(),
        "{} item(s) not landed correctly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let mut expected: Vec<String> = good
        .iter()
        .flat_map(|i| i.expected.iter().map(|f| f.rel_path.clone()))
        .collect();
    expected.sort();
    assert_eq!(
        files_under(&env.data_dir),
        expected,
        "exactly the good items' files"
    );
    assert!(tmp_leftovers(&env.data_dir).is_empty(), "no temp files");
    // Every bad item failed, with its reason.
    let store = env.store().await;
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    for (item, why) in &bad {
        let (state, _, error, _) = store
            .item_state(Source::Jmafile, &item.id)
            .await
            .unwrap()
            .unwrap();
        let error = error.unwrap_or_default();
        assert_eq!(state, "failed", "{why}: {error}");
        assert!(error.contains(why), "expected {why:?} in {error:?}");
        *reasons.entry(why).or_default() += 1;
    }
    // status agrees with the disk.
    let out = Command::new(bin())
        .args(["status", "--json"])
        .env(
            "JMA_POLLER__STORAGE__DATA_DIR",
            env.data_dir.display().to_string(),
        )
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |state: &str, field: &str| {
        v["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["state"] == state)
            .map_or(0, |c| c[field].as_i64().unwrap())
    };
    assert_eq!(count("done", "items"), good.len() as i64);
    assert_eq!(count("failed", "items"), bad.len() as i64);
    let disk: u64 = files_under(&env.data_dir)
        .iter()
        .map(|f| std::fs::metadata(env.data_dir.join(f)).unwrap().len())
        .sum();
    assert_eq!(count("done", "bytes") as u64, disk);
    let requests = sim.requests();
    let data_requests = requests.iter().filter(|r| r.id.is_some()).count();
    eprintln!(
        "soak: {} good items landed, {} bad items failed ({reasons:?}), {rounds} kill -9 rounds, {} list calls, {data_requests} body requests, {} bytes on disk",
        good.len(),
        bad.len(),
        requests.iter().filter(|r| r.is_list()).count(),
        disk
    );
}

/// Mounts a small tmpfs at `dir` (root only); `None` (with the reason printed) otherwise.
fn small_fs(dir: &std::path::Path, size: &str) -> Option<Unmount> {
    std::fs::create_dir_all(dir).unwrap();
    match Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
    {
        Ok(out) if out.status.success() => Some(Unmount(dir.to_owned())),
        other => {
            eprintln!("SKIPPED: cannot mount a small tmpfs (needs root): {other:?}");
            None
        }
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_downloads_and_everything_lands_once_space_is_freed() {
    let env = Env::new();
    let Some(_fs) = small_fs(&env.data_dir, "40m") else {
        return;
    };
    let sim = sim(200).await;
    // The database sits on the same small filesystem, as it would by default.
    let ballast = env.data_dir.join("ballast");
    std::fs::write(&ballast, vec![7u8; 30 << 20]).unwrap();
    // About 10 MiB free; these need about 16.
    let items: Vec<_> = (0..8)
        .map(|_| {
            sim.add(ItemSpec {
                kind: Kind::Plain,
                size: 2 << 20,
                ..ItemSpec::default()
            })
        })
        .collect();
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__STORAGE__MIN_FREE".into(), "0 B".into())); // the guard off: hit ENOSPC for real
    let log = env.root.path().join("out.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(30),
        "the full disk is reported",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("the data dir is full")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nothing that was not fully written is marked done: every done item is complete on disk.
    let store = env.store().await;
    for (id, path, bytes) in store.done_paths().await.unwrap() {
        let item = items.iter().find(|i| i.id == id).unwrap();
        assert_eq!(
            std::fs::read(env.data_dir.join(&path)).unwrap(),
            item.expected[0].bytes.as_ref(),
            "{path}"
        );
        assert_eq!(bytes as usize, item.expected[0].bytes.len());
    }
    let done_while_full = store.done_paths().await.unwrap().len();
    store.close().await;
    assert!(done_while_full < items.len(), "the disk really filled up");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.matches("the data dir is full").count() <= 2,
        "logged when it starts, not per item"
    );

    std::fs::remove_file(&ballast).unwrap();
    wait_until(
        Duration::from_secs(90),
        "everything lands once space is freed",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    assert!(tmp_leftovers(&env.data_dir).is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("downloads resume"), "{text}");
    assert!(!text.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_waited_for_then_work_resumes() {
    let sim = sim(200).await;
    let env = Env::new();
    let first = vec![sim.add(ItemSpec::default())];
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(15), "first item", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    // Another process takes the write lock for longer than the busy timeout (10 s).
    let url = format!("sqlite://{}", env.data_dir.join("state.sqlite").display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let during: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    // `status` still reads while a writer holds the lock (WAL).
    let out = Command::new(bin())
        .args(["status"])
        .env(
            "JMA_POLLER__STORAGE__DATA_DIR",
            env.data_dir.display().to_string(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert!(
        !daemon.handle.is_finished(),
        "the daemon survives a long lock"
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    wait_until(
        Duration::from_secs(40),
        "work resumes after the lock is released",
        || async { all_landed(&env.data_dir, &during) },
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_database_files_are_refused_untouched() {
    let sim = sim(200).await;
    let env = Env::new();
    std::fs::create_dir_all(&env.data_dir).unwrap();
    let db = env.data_dir.join("state.sqlite");
    let envs = env.binary_env(&sim);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run = || {
        Command::new(bin())
            .arg("run")
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };

    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("storage.database") && err.contains("not a database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file is left as it was"
    );

    std::fs::remove_file(&db).unwrap();
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO invoices (total) VALUES (42.0)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another program's SQLite database"), "{err}");
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, vec!["invoices"], "no tables added");
    assert!(
        fetches(&sim).is_empty() && sim.requests().is_empty(),
        "no network traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_fails_clearly_at_start_and_pauses_downloads_mid_run() {
    let env = Env::new();
    // A bind mount of a plain folder over the data dir, switched read-only and back.
    let backing = env.root.path().join("backing");
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&env.data_dir).unwrap();
    let bound = Command::new("mount")
        .arg("--bind")
        .arg(&backing)
        .arg(&env.data_dir)
        .output();
    match bound {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!("SKIPPED: cannot bind-mount the data dir (needs root): {other:?}");
            return;
        }
    }
    let _unmount = Unmount(env.data_dir.clone());
    // The kernel refuses (EBUSY) while a file on the mount is open for writing, e.g. a
    // download in flight; try a few times.
    let remount = |mode: &str| {
        for _ in 0..100 {
            let out = Command::new("mount")
                .args(["-o", &format!("remount,bind,{mode}")])
                .arg(&env.data_dir)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cannot remount the data dir {mode}");
    };
    let sim = sim(200).await;
    let outside_db = env.root.path().join("db/state.sqlite");
    let mut envs = env.binary_env(&sim);
    envs.push((
        "JMA_POLLER__STORAGE__DATABASE".into(),
        outside_db.display().to_string(),
    ));
    envs.push(("JMA_POLLER__STORAGE__MIN_FREE".into(), "0 B".into()));

    remount("ro");
    let out = Command::new(bin())
        .arg("run")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("storage.data_dir") && err.to_lowercase().contains("read-only"),
        "{err}"
    );
    remount("rw");

    let first = vec![sim.add(ItemSpec::default())];
    let log = env.root.path().join("out.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(15), "first item", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    remount("ro");
    let later: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    wait_until(Duration::from_secs(20), "the pause is reported", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("cannot write to storage.data_dir")
    })
    .await;
    remount("rw");
    wait_until(Duration::from_secs(90), "downloads resume", || async {
        all_landed(&env.data_dir, &later)
    })
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("\"event\":\"downloads_paused\"").count(),
        1,
        "reported once: {text}"
    );
    assert!(text.contains("\"event\":\"downloads_resumed\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_that_went_back_neither_stalls_the_poller_nor_the_queue() {
    let sim = sim(200).await;
    let env = Env::new();
    let item = sim.add(ItemSpec::default());
    sim.faults()
        .data_for
        .insert(item.id.clone(), [DataFault::Status(503)].into());
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(
        Duration::from_secs(15),
        "the first attempt failed",
        || async { fetches(&sim).get(&item.id) == Some(&1) },
    )
    .await;
    daemon.stop().await;

    // As if the clock had been an hour fast when these were written: the last poll and the
    // item's next attempt both lie far in the future now.
    let store = Store::open(&env.data_dir.join("state.sqlite"))
        .await
        .unwrap();
    let mut cursor = store.cursor("jmafile").await.unwrap().unwrap();
    cursor.last_poll_ms = Some(now_ms() + 3_600_000);
    cursor.interval_ms = Some(1000);
    store
        .commit_poll("jmafile", &Cursor { ..cursor }, &[], now_ms(), None)
        .await
        .unwrap();
    // Claim it (as if its retry time had come) and push its next attempt a day ahead.
    let claimed = store
        .claim_next(now_ms() + 60_000, &Claim::Any)
        .await
        .unwrap()
        .expect("the retry exists");
    store
        .mark_retry(&claimed, None, now_ms() + 86_400_000, false)
        .await
        .unwrap();
    store.close().await;

    let restarted = Instant::now();
    let daemon = Daemon::start(env.settings(&sim));
    let polled = || {
        sim.requests()
            .into_iter()
            .filter(|r| r.is_pull() && r.received > restarted)
            .map(|r| r.received)
            .min()
    };
    wait_until(
        Duration::from_secs(10),
        "the item lands despite its far-future schedule",
        || async { landed(&env.data_dir, &item) },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "a poll after the restart",
        || async { polled().is_some() },
    )
    .await;
    daemon.stop().await;
    let first_poll = polled().unwrap();
    assert!(
        first_poll.duration_since(restarted) < Duration::from_secs(3),
        "the first poll came {:?} after the restart",
        first_poll.duration_since(restarted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_list_call_blocks_neither_downloads_nor_shutdown() {
    let sim = sim(200).await;
    let env = Env::new();
    let items: Vec<_> = (0..8).map(|_| sim.add(ItemSpec::default())).collect();
    // The first list call answers; the next one hangs for a minute.
    sim.faults().list.extend([
        ListFault::Delay(Duration::ZERO),
        ListFault::Delay(Duration::from_secs(60)),
    ]);
    let log = env.root.path().join("out.log");
    let mut envs = env.binary_env(&sim);
    // Downloads paced at 4 per 2 s, so they go on while the second list call hangs. The
    // client's read timeout (3 s in the tests' environment, shared by list calls) is set past
    // the test's own deadline, so the hang lasts as long as the test looks.
    envs.extend([
        (
            "JMA_POLLER__DOWNLOAD__READ_TIMEOUT".to_owned(),
            "90s".to_owned(),
        ),
        (
            "JMA_POLLER__LIMITS__DATA_REQUESTS".to_owned(),
            "4".to_owned(),
        ),
        (
            "JMA_POLLER__LIMITS__DATA_WINDOW".to_owned(),
            "2s".to_owned(),
        ),
        ("JMA_POLLER__LIMITS__DATA_BURST".to_owned(), "1".to_owned()),
    ]);
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(30),
        "items land while a list call hangs",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    let lists = sim.requests().iter().filter(|r| r.is_list()).count();
    assert_eq!(
        lists, 1,
        "the second list call is still hanging (only answered calls are logged)"
    );
    let sent = Instant::now();
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        sent.elapsed()
    );
}
