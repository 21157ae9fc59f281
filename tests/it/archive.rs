//! Daily archives: listing and paging, safe unpacking, retries, kill -9 mid-unpack, the
//! `backfill` command, and jmafile going first.

use std::time::{Duration, Instant};

use jma_poller::poll::archive::jst_today;
use jma_poller::sim::{ArchiveSpec, DataFault, Hostile, ItemSpec, Sim, SimArchive, SimConfig};
use jma_poller::state::Source;

use crate::common::*;

fn archive_settings(env: &Env, sim: &Sim) -> jma_poller::config::Settings {
    let mut s = env.settings(sim);
    s.archive.enabled = true;
    s.archive.check_interval = Duration::from_secs(1);
    s
}

fn archives_landed(env: &Env, archives: &[SimArchive]) -> bool {
    archives.iter().all(|a| {
        a.expected.iter().all(|f| {
            std::fs::read(env.data_dir.join(&f.rel_path)).is_ok_and(|b| b == f.bytes.as_ref())
        })
    })
}

fn archive_dir(env: &Env, a: &SimArchive) -> std::path::PathBuf {
    env.data_dir
        .join(format!("archive/{}/{}", a.classification, a.date_str()))
}

/// Exactly the expected files in the archive's folder, nothing more.
fn assert_archive_exact(env: &Env, a: &SimArchive) {
    let dir = archive_dir(env, a);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = a
        .expected
        .iter()
        .map(|f| f.rel_path.rsplit('/').next().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(on_disk, expected, "{}", dir.display());
    assert!(archives_landed(env, std::slice::from_ref(a)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_for_several_days_and_classifications_land_once_and_a_new_day_is_picked_up() {
    let sim = sim(200).await;
    let env = Env::new();
    let mut archives = sim.add_archive_days(
        &["telegram.earthquake", "telegram.weather", "eew.forecast"],
        3,
    );
    let daemon = Daemon::start(archive_settings(&env, &sim));
    wait_until(Duration::from_secs(30), "all archives land", || async {
        archives_landed(&env, &archives)
    })
    .await;
    // Today's archive appears while the daemon runs (at ~00:30 JST the next day, upstream).
    archives.push(sim.add_archive(ArchiveSpec::new("telegram.earthquake", jst_today())));
    wait_until(
        Duration::from_secs(15),
        "the new day lands on a later check",
        || async { archives_landed(&env, &archives) },
    )
    .await;
    daemon.stop().await;

    for a in &archives {
        assert_archive_exact(&env, a);
    }
    let f = fetches(&sim);
    for a in &archives {
        assert_eq!(
            f.get(&a.id),
            Some(&1),
            "{} {} fetched once",
            a.classification,
            a.date_str()
        );
    }
    assert!(tmp_leftovers(&env.data_dir).is_empty());
    let report = env.store().await.status().await.unwrap();
    let newest: Vec<_> = report
        .archive_newest
        .iter()
        .map(|(c, _)| c.as_str())
        .collect();
    assert_eq!(
        newest,
        vec!["eew.forecast", "telegram.earthquake", "telegram.weather"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_covers_more_than_one_page_and_the_backfill_horizon_holds() {
    let sim = sim(200).await;
    let env = Env::new();
    // 60 days x 2 = 120 archives: two pages of 100. Backfill 30 days: only 30 x 2 wanted.
    let all = sim.add_archive_days(&["telegram.earthquake", "telegram.weather"], 60);
    let horizon = jst_today() - time::Duration::days(30);
    let (wanted, older): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| a.date >= horizon);
    assert_eq!(wanted.len(), 60);
    let mut settings = archive_settings(&env, &sim);
    settings.archive.backfill = Duration::from_secs(30 * 86_400);
    // The horizon is enforced by us even if the server ignores `datetime`.
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(60),
        "the backfill window lands",
        || async { archives_landed(&env, &wanted) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.stop().await;
    let f = fetches(&sim);
    assert!(
        older.iter().all(|a| !f.contains_key(&a.id)),
        "nothing older than the horizon fetched"
    );
    assert!(older.iter().all(|a| !archive_dir(&env, a).exists()));

    // Now without the server-side filter helping: 150 archives in range, limit 100 per page.
    let sim2 = Sim::start(SimConfig {
        data_limit: None,
        api_limit: None,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let env2 = Env::new();
    let many = sim2.add_archive_days(
        &[
            "telegram.earthquake",
            "telegram.weather",
            "telegram.volcano",
        ],
        50,
    );
    let mut settings = archive_settings(&env2, &sim2);
    settings.archive.backfill = Duration::from_secs(60 * 86_400);
    settings.download.concurrency = 4;
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(60),
        "150 archives over two pages land",
        || async { archives_landed(&env2, &many) },
    )
    .await;
    daemon.stop().await;
    let pages = sim2
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/archive")
        .filter(|r| r.cursor_kind.as_deref() == Some("next"))
        .count();
    assert!(pages >= 1, "a nextToken page was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_never_stops_paging_is_capped() {
    let sim = sim(200).await;
    sim.config().archive_endless = true;
    let env = Env::new();
    let archives = sim.add_archive_days(&["telegram.earthquake"], 2);
    let start = Instant::now();
    let daemon = Daemon::start(archive_settings(&env, &sim));
    wait_until(
        Duration::from_secs(30),
        "archives land despite the runaway",
        || async { archives_landed(&env, &archives) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    daemon.stop().await;
    let lists: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v2/archive" && r.received > start)
        .collect();
    let first_check = lists
        .iter()
        .take_while(|r| r.cursor_kind.is_some() || std::ptr::eq(*r, &lists[0]))
        .count();
    assert_eq!(
        first_check,
        jma_poller::poll::archive::MAX_PAGES as usize,
        "the first check stops at the cap"
    );
    // Later checks find page one all known and stop at once.
    let later_starts = lists.iter().filter(|r| r.cursor_kind.is_none()).count();
    assert!(later_starts >= 2);
    assert!(
        lists.len() < first_check + 2 * later_starts,
        "later checks do not page: {} calls",
        lists.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_mismatch_truncation_and_corruption_are_retried_and_never_left_half_unpacked() {
    let sim = sim(200).await;
    let env = Env::new();
    let today = jst_today();
    let truncated = sim.add_archive(ArchiveSpec {
        telegrams: 200,
        ..ArchiveSpec::new("telegram.earthquake", today - time::Duration::days(1))
    });
    let corrupt = sim.add_archive(ArchiveSpec {
        telegrams: 200,
        ..ArchiveSpec::new("telegram.earthquake", today - time::Duration::days(2))
    });
    let lying = sim.add_archive(ArchiveSpec {
        file_size: Some(12345),
        ..ArchiveSpec::new("telegram.earthquake", today - time::Duration::days(3))
    });
    let miscounted = sim.add_archive(ArchiveSpec {
        data_count: Some(999),
        ..ArchiveSpec::new("telegram.weather", today - time::Duration::days(1))
    });
    sim.faults().data_for.insert(
        truncated.id.clone(),
        [DataFault::Truncate(truncated.body.len() / 2)].into(),
    );
    sim.faults()
        .data_for
        .insert(corrupt.id.clone(), [DataFault::Corrupt].into());
    let mut settings = archive_settings(&env, &sim);
    settings.download.max_attempts = 2;
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(40), "retried archives land", || async {
        archives_landed(
            &env,
            &[truncated.clone(), corrupt.clone(), miscounted.clone()],
        )
    })
    .await;
    let store_path = env.data_dir.join("state.sqlite");
    wait_until(
        Duration::from_secs(20),
        "the lying archive fails",
        || async {
            let Ok(store) = jma_poller::state::Store::open_read_only(&store_path).await else {
                return false;
            };
            let s = store
                .item_state(Source::Archive, &lying.id)
                .await
                .ok()
                .flatten();
            store.close().await;
            s.is_some_and(|(state, ..)| state == "failed")
        },
    )
    .await;
    daemon.stop().await;

    assert_archive_exact(&env, &truncated);
    assert_archive_exact(&env, &corrupt);
    assert_archive_exact(&env, &miscounted); // a dataCount mismatch is a warning, not a failure
    let f = fetches(&sim);
    assert_eq!((f[&truncated.id], f[&corrupt.id], f[&lying.id]), (2, 2, 2));
    let (_, _, error, _) = env
        .store()
        .await
        .item_state(Source::Archive, &lying.id)
        .await
        .unwrap()
        .unwrap();
    assert!(error.unwrap().contains("fileSize 12345"));
    assert!(!archive_dir(&env, &lying).exists(), "no half-unpacked day");
    assert!(tmp_leftovers(&env.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tarballs_are_refused_with_nothing_written_outside_and_the_daemon_keeps_running() {
    let sim = sim(200).await;
    let env = Env::new();
    let today = jst_today();
    let kinds = [
        Hostile::Traversal,
        Hostile::Absolute,
        Hostile::Symlink,
        Hostile::HardLink,
        Hostile::Bomb(8 << 20),
    ];
    let hostile: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, h)| {
            sim.add_archive(ArchiveSpec {
                hostile: Some(*h),
                ..ArchiveSpec::new(
                    "telegram.volcano",
                    today - time::Duration::days(i as i64 + 1),
                )
            })
        })
        .collect();
    let mut settings = archive_settings(&env, &sim);
    settings.download.max_size = bytesize::ByteSize::mib(1);
    let daemon = Daemon::start(settings);
    let store_path = env.data_dir.join("state.sqlite");
    let ids: Vec<String> = hostile.iter().map(|a| a.id.clone()).collect();
    wait_until(
        Duration::from_secs(30),
        "every hostile archive is failed",
        || async {
            let Ok(store) = jma_poller::state::Store::open_read_only(&store_path).await else {
                return false;
            };
            let mut failed = 0;
            for id in &ids {
                if let Ok(Some((s, ..))) = store.item_state(Source::Archive, id).await {
                    failed += (s == "failed") as usize;
                }
            }
            store.close().await;
            failed == ids.len()
        },
    )
    .await;
    let good = vec![sim.add_archive(ArchiveSpec::new("telegram.volcano", today))];
    wait_until(
        Duration::from_secs(15),
        "a good archive still lands",
        || async { archives_landed(&env, &good) },
    )
    .await;
    daemon.stop().await;

    let store = env.store().await;
    let expect = ["'..'", "absolute", "symbolic link", "hard link", "max_size"];
    for (a, why) in hostile.iter().zip(expect) {
        let (state, attempts, error, _) = store
            .item_state(Source::Archive, &a.id)
            .await
            .unwrap()
            .unwrap();
        let error = error.unwrap();
        assert_eq!((state.as_str(), attempts), ("failed", 1), "{error}");
        assert!(error.contains(why), "{error} should mention {why}");
        assert!(!archive_dir(&env, a).exists());
    }
    let outside: Vec<_> = std::fs::read_dir(env.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("data")]);
    assert!(!std::path::Path::new("/tmp/jma-poller-absolute.xml").exists());
    assert!(
        !env.data_dir.join("escaped.xml").exists()
            && !env.data_dir.join("archive/escaped.xml").exists()
    );
    assert!(tmp_leftovers(&env.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_unpacking_leaves_a_complete_day_after_restart() {
    let sim = sim(200).await;
    let env = Env::new();
    // Big enough that unpacking (an fsync per file) takes a while.
    let archive = sim.add_archive(ArchiveSpec {
        telegrams: 1500,
        ..ArchiveSpec::new("eew.forecast", jst_today() - time::Duration::days(1))
    });
    let log = env.root.path().join("daemon.log");
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__ARCHIVE__ENABLED".into(), "true".into()));
    envs.push(("JMA_POLLER__ARCHIVE__CHECK_INTERVAL".into(), "1s".into()));
    // Each restart should pick the interrupted archive up at once, as it did before
    // download.refetch_delay existed, so that the short rounds below reach the unpacking.
    envs.push(("JMA_POLLER__DOWNLOAD__REFETCH_DELAY".into(), "0s".into()));
    let mut rng = fastrand::Rng::new();
    let mut killed_mid_unpack = 0;
    for _ in 0..6 {
        let mut child = spawn_bin(&["run"], &envs, &log);
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        if tmp_leftovers(&env.data_dir).len() > 10 {
            killed_mid_unpack += 1;
        }
        child.kill9();
        if archive_dir(&env, &archive).exists() {
            break;
        }
    }
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(60), "the day is complete", || async {
        archives_landed(&env, std::slice::from_ref(&archive))
    })
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    assert_archive_exact(&env, &archive);
    assert!(tmp_leftovers(&env.data_dir).is_empty());
    assert!(
        killed_mid_unpack >= 1,
        "at least one kill hit a half-unpacked staging folder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmafile_items_go_before_archives_when_both_are_queued() {
    let sim = sim(100).await;
    let env = Env::new();
    let archives = sim.add_archive_days(&["telegram.earthquake", "telegram.weather"], 5);
    let items: Vec<_> = (0..5).map(|_| sim.add(ItemSpec::default())).collect();
    let mut settings = archive_settings(&env, &sim);
    settings.download.concurrency = 1;
    settings.limits.data_requests = 4;
    settings.limits.data_window = Duration::from_secs(2);
    settings.limits.data_burst = Some(1);
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(40), "everything lands", || async {
        archives_landed(&env, &archives) && all_landed(&env.data_dir, &items)
    })
    .await;
    daemon.stop().await;
    let order: Vec<bool> = sim
        .requests()
        .into_iter()
        .filter(|r| r.id.is_some())
        .map(|r| r.path.starts_with("/v1/archive/"))
        .collect();
    // Both lists are committed within the first paced request; from then on every jmafile
    // item goes before any further archive.
    let last_jmafile = order.iter().rposition(|is_archive| !is_archive).unwrap();
    let archives_before = order[..last_jmafile].iter().filter(|a| **a).count();
    assert!(archives_before <= 1, "download order {order:?}");
}

fn run_backfill(env: &Env, sim: &Sim, extra: &[(&str, &str)], from: &str, to: &str) -> Proc {
    let mut envs = env.binary_env(sim);
    envs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spawn_bin(
        &[
            "backfill",
            "--classification",
            "telegram.earthquake",
            "--from",
            from,
            "--to",
            to,
        ],
        &envs,
        &env.root.path().join("backfill.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_resumes_after_interruption_and_agrees_with_the_daemon() {
    let sim = sim(200).await;
    let env = Env::new();
    let range: Vec<_> = (1..=8)
        .map(|d| {
            sim.add_archive(ArchiveSpec::new(
                "telegram.earthquake",
                jst_today() - time::Duration::days(d),
            ))
        })
        .collect();
    let other = sim.add_archive(ArchiveSpec::new(
        "telegram.weather",
        jst_today() - time::Duration::days(2),
    ));
    let from = range.last().unwrap().date_str();
    let to = range[0].date_str();
    // A slow budget (2 per 2 s) so the first run is interrupted part way.
    let slow = [
        ("JMA_POLLER__LIMITS__DATA_REQUESTS", "2"),
        ("JMA_POLLER__LIMITS__DATA_WINDOW", "2s"),
        ("JMA_POLLER__LIMITS__DATA_BURST", "1"),
    ];
    let mut child = run_backfill(&env, &sim, &slow, &from, &to);
    wait_until(Duration::from_secs(20), "some archives land", || async {
        range
            .iter()
            .filter(|a| archive_dir(&env, a).exists())
            .count()
            >= 2
    })
    .await;
    let status = child.stop("-INT", STOP_LIMIT).await;
    let log = std::fs::read_to_string(env.root.path().join("backfill.log")).unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        log.contains("run the same command again to resume"),
        "{log}"
    );
    let landed_first = range
        .iter()
        .filter(|a| archive_dir(&env, a).exists())
        .count();
    assert!(landed_first < range.len(), "interrupted before the end");

    // A daemon (without archives of its own) now holds the data dir: the second run only
    // reports, the daemon downloads.
    let mut settings = env.settings(&sim);
    settings.jmafile.enabled = true;
    let daemon = Daemon::start(settings);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = run_backfill(&env, &sim, &[], &from, &to);
    let status = child
        .exit_within(Duration::from_secs(120), "starting the backfill")
        .await;
    let log = std::fs::read_to_string(env.root.path().join("backfill.log")).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("a daemon is running on this data dir"),
        "{log}"
    );
    assert!(log.contains("archives of telegram.earthquake"), "{log}");
    daemon.stop().await;

    for a in &range {
        assert_archive_exact(&env, a);
    }
    assert!(
        !archive_dir(&env, &other).exists(),
        "only the requested classification"
    );
    let f = fetches(&sim);
    let total: usize = range
        .iter()
        .map(|a| f.get(&a.id).copied().unwrap_or(0))
        .sum();
    assert!(
        total <= range.len() + 2,
        "at most the interrupted transfers repeated: {total}"
    );
    let progress = env
        .store()
        .await
        .archive_progress("telegram.earthquake", 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(
        progress,
        vec![("done".to_owned(), range.len() as i64)],
        "status agrees: all done"
    );
    assert!(tmp_leftovers(&env.data_dir).is_empty());
}
