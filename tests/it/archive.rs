//! Daily archives: listing and paging, date bounds, safe unpacking (PAX and GNU metadata
//! records), integrity from the data rather than `fileSize`, `dataCount`, retries, kill -9
//! mid-unpack, the `backfill` command, and jmafile going first.

use jma_poller::state::prelude::*;
use std::time::{Duration, Instant};

use jma_poller::poll::archive::jst_today;
use jma_poller::sim::{
    ArchiveSpec, DataFault, DateBound, Hostile, ItemSpec, Sim, SimArchive, SimConfig, TarFormat,
};
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

/// A body that fails the data's own checks (cut short, bad gzip CRC) is refused and fetched
/// again; a dataCount that matches nothing is only a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_corruption_are_retried_and_never_left_half_unpacked() {
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
    daemon.stop().await;

    assert_archive_exact(&env, &truncated);
    assert_archive_exact(&env, &corrupt);
    assert_archive_exact(&env, &miscounted); // a dataCount mismatch is a warning, not a failure
    let f = fetches(&sim);
    assert_eq!(
        (f[&truncated.id], f[&corrupt.id], f[&miscounted.id]),
        (2, 2, 1)
    );
    let store = env.store().await;
    let (state, attempts, _, _) = store
        .item_state(Source::Archive, &corrupt.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("done", 2),
        "the corrupt body was refused once, then fetched again"
    );
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

/// The JSON log lines of `path` whose `event` is `event`.
fn log_events(path: &std::path::Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// The `datetime` parameter of an archive list request.
fn datetime_param(r: &jma_poller::sim::Request) -> String {
    url::form_urlencoded::parse(r.query.as_bytes())
        .find(|(k, _)| k == "datetime")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The dates the simulator's archive list gives for `datetime`, asked by a plain client.
async fn listed_dates(sim: &Sim, datetime: &str) -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}/v2/archive?datetime={datetime}", sim.base_url());
    let r = reqwest::Client::new()
        .get(url)
        .basic_auth(sim.key(), Some(""))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["date"].as_str().unwrap().to_owned())
        .collect()
}

/// Archives of `classification` for the five days around `day`, `day` in the middle.
fn five_days(sim: &Sim, classification: &str, day: time::Date) -> Vec<SimArchive> {
    (-2..=2)
        .map(|d| {
            sim.add_archive(ArchiveSpec::new(
                classification,
                day + time::Duration::days(d),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_day_backfill_lands_that_day_whichever_way_the_server_treats_the_bounds() {
    for bound in [DateBound::Exclusive, DateBound::Inclusive] {
        let sim = sim(200).await;
        {
            let mut c = sim.config();
            c.archive_start = bound;
            c.archive_end = bound;
        }
        let env = Env::new();
        let around = five_days(
            &sim,
            "telegram.earthquake",
            jst_today() - time::Duration::days(4),
        );
        let day = &around[2];
        // The simulator does what it is told: asked for exactly the day, an exclusive start
        // leaves nothing.
        let plain = listed_dates(&sim, &format!("{}~{}", day.date_str(), day.date_str())).await;
        assert_eq!(
            plain.is_empty(),
            bound == DateBound::Exclusive,
            "{bound:?}: {plain:?}"
        );
        let ours_from = sim.requests().len();

        let d = day.date_str();
        let mut child = run_backfill(&env, &sim, &[], &d, &d);
        let status = child
            .exit_within(Duration::from_secs(120), "the one-day backfill")
            .await;
        let log = std::fs::read_to_string(env.root.path().join("backfill.log")).unwrap();
        assert_eq!(status.code(), Some(0), "{bound:?}: {log}");
        assert_archive_exact(&env, day);
        let f = fetches(&sim);
        for a in around.iter().filter(|a| a.id != day.id) {
            assert!(
                !archive_dir(&env, a).exists(),
                "{bound:?}: {} landed",
                a.date_str()
            );
            assert!(
                !f.contains_key(&a.id),
                "{bound:?}: {} fetched",
                a.date_str()
            );
        }
        let progress = env
            .store()
            .await
            .archive_progress("telegram.earthquake", 0, i64::MAX)
            .await
            .unwrap();
        assert_eq!(
            progress,
            vec![("done".to_owned(), 1)],
            "{bound:?}: nothing else queued"
        );
        let lists: Vec<_> = sim
            .requests()
            .into_iter()
            .skip(ours_from)
            .filter(|r| r.path == "/v2/archive")
            .collect();
        assert_eq!(lists.len(), 1, "{bound:?}: one list call");
        assert_eq!(
            datetime_param(&lists[0]),
            format!("{}~{}", around[1].date_str(), around[3].date_str()),
            "a day wider at both ends"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_never_asks_for_days_before_the_service_keeps_them() {
    let sim = sim(200).await;
    let env = Env::new();
    // eew.forecast is kept from 2022-07-20: a range ending before asks nothing at all.
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__LOG__LEVEL".into(), "info".into()));
    let log = env.root.path().join("backfill.log");
    let mut child = spawn_bin(
        &[
            "backfill",
            "--classification",
            "eew.forecast",
            "--from",
            "2021-01-01",
            "--to",
            "2022-07-19",
        ],
        &envs,
        &log,
    );
    let status = child
        .exit_within(Duration::from_secs(60), "the backfill")
        .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("from 2022-07-20 on"), "{text}");
    assert!(
        sim.requests().iter().all(|r| r.path != "/v2/archive"),
        "no list call for days the service does not keep"
    );
    // A range reaching back before it starts at that day.
    let mut child = spawn_bin(
        &[
            "backfill",
            "--classification",
            "eew.forecast",
            "--from",
            "2022-07-01",
            "--to",
            "2022-07-25",
        ],
        &envs,
        &log,
    );
    let status = child
        .exit_within(Duration::from_secs(60), "the backfill")
        .await;
    assert_eq!(status.code(), Some(0));
    let lists: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v2/archive")
        .collect();
    assert_eq!(lists.len(), 1);
    assert_eq!(datetime_param(&lists[0]), "2022-07-20~2022-07-26");
}

/// The kinds of the raw records in a simulated tarball (metadata included).
fn record_kinds(a: &SimArchive) -> Vec<tar::EntryType> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&a.body[..]));
    tar.entries()
        .unwrap()
        .raw(true)
        .map(|e| e.unwrap().header().entry_type())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pax_headed_archive_lands_with_its_members_and_no_stray_metadata() {
    let sim = sim(200).await;
    let env = Env::new();
    let long = format!(
        "VXSE53_RJTD_20250212150002514_0c1f04f_{}.json",
        "p".repeat(120)
    );
    let pax = sim.add_archive(ArchiveSpec {
        format: TarFormat::Pax,
        extra_members: vec![(long.clone(), b"{\"long\":\"pax\"}".to_vec())],
        ..ArchiveSpec::new("telegram.earthquake", jst_today() - time::Duration::days(1))
    });
    let kinds = record_kinds(&pax);
    assert_eq!(
        kinds[0],
        tar::EntryType::XGlobalHeader,
        "a global header first"
    );
    assert!(kinds.contains(&tar::EntryType::XHeader));
    let daemon = Daemon::start(archive_settings(&env, &sim));
    wait_until(Duration::from_secs(30), "the PAX archive lands", || async {
        archives_landed(&env, std::slice::from_ref(&pax))
    })
    .await;
    daemon.stop().await;
    // Exactly the members: no pax_global_header, no PaxHeaders.0/…, the long name whole.
    assert_archive_exact(&env, &pax);
    assert!(archive_dir(&env, &pax).join(&long).is_file());
    assert_eq!(
        files_under(&archive_dir(&env, &pax)).len(),
        pax.expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gnu_long_name_member_lands_under_its_long_name() {
    let sim = sim(200).await;
    let env = Env::new();
    let long = format!(
        "IXAC41_RJTD_RRA_20250212150002101_0c1f04f_{}.bin",
        "g".repeat(150)
    );
    let gnu = sim.add_archive(ArchiveSpec {
        extra_members: vec![(long.clone(), b"BUFR-long-7777".to_vec())],
        ..ArchiveSpec::new("telegram.earthquake", jst_today() - time::Duration::days(1))
    });
    assert!(record_kinds(&gnu).contains(&tar::EntryType::GNULongName));
    let daemon = Daemon::start(archive_settings(&env, &sim));
    wait_until(Duration::from_secs(30), "the archive lands", || async {
        archives_landed(&env, std::slice::from_ref(&gnu))
    })
    .await;
    daemon.stop().await;
    assert_archive_exact(&env, &gnu);
    assert_eq!(
        std::fs::read(archive_dir(&env, &gnu).join(&long)).unwrap(),
        b"BUFR-long-7777"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_a_wrong_file_size_lands_with_one_warning_and_the_metric() {
    let sim = sim(200).await;
    let env = Env::new();
    let lying = sim.add_archive(ArchiveSpec {
        file_size: Some(12345),
        ..ArchiveSpec::new("telegram.volcano", jst_today() - time::Duration::days(1))
    });
    let honest = sim.add_archive(ArchiveSpec::new(
        "telegram.volcano",
        jst_today() - time::Duration::days(2),
    ));
    let port = crate::ops::free_port();
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__ARCHIVE__ENABLED".into(), "true".into()));
    envs.push(("JMA_POLLER__ARCHIVE__CHECK_INTERVAL".into(), "1s".into()));
    envs.push((
        "JMA_POLLER__SERVER__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    let both = [lying.clone(), honest.clone()];
    wait_until(Duration::from_secs(30), "both archives land", || async {
        archives_landed(&env, &both)
    })
    .await;
    // A few more checks, so a retry would have had its chance.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, metrics) = crate::ops::get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    assert_eq!(code, 200);

    assert_archive_exact(&env, &lying);
    assert_archive_exact(&env, &honest);
    let f = fetches(&sim);
    assert_eq!(
        (f[&lying.id], f[&honest.id]),
        (1, 1),
        "a size mismatch is not a retry"
    );
    let warnings = log_events(&log, "archive_size_mismatch");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!(w["level"], "WARN");
    assert_eq!(w["id"], lying.id.as_str());
    assert_eq!(w["classification"], "telegram.volcano");
    assert_eq!(w["date"], lying.date_str().as_str());
    assert_eq!(w["announced"], 12345);
    assert_eq!(w["actual"], lying.body.len() as u64);
    assert!(log_events(&log, "retry").is_empty());
    assert_eq!(
        crate::ops::sample(
            &metrics,
            "jma_poller_archive_size_mismatch_total",
            &[("classification", "telegram.volcano")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_count_is_checked_against_the_manifest_entries_or_the_distinct_telegrams() {
    let sim = sim(200).await;
    let env = Env::new();
    let day = |d: i64| jst_today() - time::Duration::days(d);
    // telegram.earthquake: 4 XML telegrams with JSON twins and 2 binary ones without.
    let entries = sim.add_archive(ArchiveSpec::new("telegram.earthquake", day(1)));
    assert_eq!(
        (entries.manifest_entries, entries.distinct_telegrams),
        (10, 6)
    );
    let distinct = sim.add_archive(ArchiveSpec {
        data_count: Some(6),
        ..ArchiveSpec::new("telegram.earthquake", day(2))
    });
    let neither = sim.add_archive(ArchiveSpec {
        data_count: Some(8),
        ..ArchiveSpec::new("telegram.earthquake", day(3))
    });
    assert_eq!(entries.data_count, 10);
    let all = [entries.clone(), distinct.clone(), neither.clone()];
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__ARCHIVE__ENABLED".into(), "true".into()));
    envs.push(("JMA_POLLER__ARCHIVE__CHECK_INTERVAL".into(), "1s".into()));
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(30), "the archives land", || async {
        archives_landed(&env, &all)
    })
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    for a in &all {
        assert_archive_exact(&env, a);
        let bins = a
            .expected
            .iter()
            .filter(|f| f.rel_path.ends_with(".bin"))
            .count();
        assert_eq!(bins, 2, "binary telegrams land too");
    }
    let warnings = log_events(&log, "archive_data_count");
    assert!(log_events(&log, "archive_no_manifest").is_empty());
    assert_eq!(
        warnings.len(),
        1,
        "only the count that matches neither: {warnings:?}"
    );
    assert_eq!(warnings[0]["id"], neither.id.as_str());
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(
        message.contains("dataCount is 8") && message.contains("10 entries, 6 distinct"),
        "{message}"
    );
}
