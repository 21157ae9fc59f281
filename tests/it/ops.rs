//! Operations: systemd notify over a real datagram socket, `/metrics` and `/readyz` scraped
//! over HTTP, `healthcheck`, retention, the low-disk guard on a real small filesystem, the
//! post-download hook, `sockets`, and journald priorities.

use jma_poller::state::prelude::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use jma_poller::sim::{DataFault, ItemSpec, Kind, ListFault};
use jma_poller::state::Source;

use crate::common::*;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn get(url: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the Prometheus sample `name` carrying all of `labels` (in any order).
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_status_watchdog_and_stopping_arrive_on_a_real_socket() {
    let sim = sim(200).await;
    let env = Env::new();
    let sock_path = env.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let items: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let mut envs = env.binary_env(&sim);
    envs.push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    envs.push(("WATCHDOG_USEC".into(), "1000000".into()));
    let mut child = spawn_bin(&["run"], &envs, &env.root.path().join("out.log"));
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    // Pings are counted from READY=1 on: how long the start takes depends on the machine's
    // load, and is not what this checks.
    let mut ready_at: Option<Instant> = None;
    let mut pings_after_ready: Vec<Instant> = Vec::new();
    while pings_after_ready.len() < 4 || !all_landed(&env.data_dir, &items) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out; seen {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                if line == "READY=1" {
                    ready_at.get_or_insert_with(Instant::now);
                }
                if line == "WATCHDOG=1" && ready_at.is_some() {
                    pings_after_ready.push(Instant::now());
                }
                seen.push(line.to_owned());
            }
        }
    }
    // Every 0.5 s (half of WATCHDOG_USEC); 4 of them within 4 s of READY leaves room for a
    // loaded machine while a missing ping loop could never pass.
    let ready_at = ready_at.expect("READY=1");
    assert!(
        pings_after_ready[3].duration_since(ready_at) < Duration::from_secs(4),
        "4 pings took {:?} after READY: {seen:?}",
        pings_after_ready[3].duration_since(ready_at)
    );
    let status = child.stop("-TERM", STOP_LIMIT).await;
    while let Ok(n) = sock.recv(&mut buf) {
        seen.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    assert_eq!(status.code(), Some(0));
    let ready = seen.iter().position(|m| m == "READY=1").expect("READY=1");
    // READY=1 carries a STATUS= of that moment in the same datagram, so `systemctl status`
    // never shows "starting" for a unit that is up.
    let with_ready = seen.get(ready + 1).map_or("", String::as_str);
    assert!(
        with_ready.starts_with("STATUS=polling; "),
        "READY=1 comes with the current STATUS=: {seen:?}"
    );
    let stopping = seen
        .iter()
        .position(|m| m == "STOPPING=1")
        .expect("STOPPING=1");
    assert!(ready < stopping);
    let watchdogs = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        watchdogs >= 4,
        "WATCHDOG=1 about every 0.5 s: {watchdogs} in {seen:?}"
    );
    let status_line = seen
        .iter()
        .find(|m| m.starts_with("STATUS="))
        .expect("a STATUS= line");
    assert!(
        status_line.contains("files") && status_line.contains("queued"),
        "{status_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_items_land_and_readyz_turns_unready_when_polls_fail() {
    let sim = sim(200).await;
    let env = Env::new();
    let class = "jmafile.metrics-test";
    let items: Vec<_> = (0..3)
        .map(|_| {
            sim.add(ItemSpec {
                classification: Some(class.into()),
                ..ItemSpec::default()
            })
        })
        .collect();
    let mut settings = env.settings(&sim);
    settings.server.ready_staleness = Duration::from_secs(3);
    let (daemon, addr) = Daemon::serve(settings).await;
    let (base, port) = (format!("http://{addr}"), addr.port());
    wait_until(Duration::from_secs(15), "items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!((code, body.trim()), (200, "ready"));
    let (code, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    let downloaded = [("source", "jmafile"), ("classification", class)];
    assert_eq!(
        sample(&metrics, "jma_poller_items_downloaded_total", &downloaded),
        Some(3.0),
        "{metrics}"
    );
    for name in [
        "jma_poller_polls_total",
        "jma_poller_bytes_total",
        "jma_poller_download_seconds_bucket",
        "jma_poller_end_to_end_seconds_bucket",
        "jma_poller_files",
        "jma_poller_last_success_timestamp_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // One more item: the counter moves.
    let more = vec![sim.add(ItemSpec {
        classification: Some(class.into()),
        ..ItemSpec::default()
    })];
    wait_until(Duration::from_secs(10), "one more lands", || async {
        all_landed(&env.data_dir, &more)
    })
    .await;
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&metrics, "jma_poller_items_downloaded_total", &downloaded),
        Some(4.0)
    );

    // Healthcheck through the listener, as Docker would run it.
    let port_s = port.to_string();
    let run_healthcheck = || {
        Command::new(bin())
            .args(["healthcheck"])
            .env("JMA_POLLER__SERVER__LISTEN", format!("0.0.0.0:{port_s}"))
            .output()
            .unwrap()
    };
    assert!(run_healthcheck().status.success());

    // Polls start failing: once the last success is older than 3 s, not ready.
    sim.faults()
        .list
        .extend(std::iter::repeat_n(ListFault::Status(503), 100));
    wait_until(Duration::from_secs(20), "readyz turns 503", || async {
        get(&format!("{base}/readyz")).await.0 == 503
    })
    .await;
    let (_, body) = get(&format!("{base}/readyz")).await;
    assert!(body.contains("last successful poll"), "{body}");
    let out = run_healthcheck();
    assert_eq!(out.status.code(), Some(1), "healthcheck fails too");
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    let failed_polls = sample(
        &metrics,
        "jma_poller_polls_total",
        &[("source", "jmafile"), ("result", "error")],
    );
    assert!(failed_polls.unwrap_or(0.0) >= 1.0, "{metrics}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_only_old_finished_items_and_never_fetches_them_again() {
    let sim = sim(200).await;
    let env = Env::new();
    let hours_ago = |h: i64| Some(time::OffsetDateTime::now_utc() - time::Duration::hours(h));
    let old: Vec<_> = (0..3)
        .map(|i| {
            sim.add(ItemSpec {
                received: hours_ago(3 + i),
                ..ItemSpec::default()
            })
        })
        .collect();
    let old_concat = sim.add(ItemSpec {
        kind: Kind::Concat { children: 2 },
        received: hours_ago(3),
        ..ItemSpec::default()
    });
    let stuck = sim.add(ItemSpec {
        received: hours_ago(4),
        ..ItemSpec::default()
    });
    sim.faults().data_for.insert(
        stuck.id.clone(),
        std::iter::repeat_n(DataFault::Status(503), 1000).collect(),
    );
    let fresh: Vec<_> = (0..2).map(|_| sim.add(ItemSpec::default())).collect();
    let mut settings = env.settings(&sim);
    settings.jmafile.backfill = Duration::from_secs(8 * 3600);
    settings.download.max_attempts = 1000;
    let daemon = Daemon::start(settings.clone());
    wait_until(
        Duration::from_secs(20),
        "everything but the stuck item lands",
        || async {
            all_landed(&env.data_dir, &old)
                && landed(&env.data_dir, &old_concat)
                && all_landed(&env.data_dir, &fresh)
        },
    )
    .await;
    daemon.stop().await;

    // Restart with a 1 h retention: the first pass runs at start.
    settings.storage.retention = Some(Duration::from_secs(3600));
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(20), "old files are removed", || async {
        old.iter().chain([&old_concat]).all(|i| {
            i.expected
                .iter()
                .all(|f| !env.data_dir.join(&f.rel_path).exists())
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop().await;
    assert!(all_landed(&env.data_dir, &fresh), "recent items stay");
    let store = env.store().await;
    for item in old.iter().chain([&old_concat]) {
        assert!(
            store
                .item_state(Source::Jmafile, &item.id)
                .await
                .unwrap()
                .is_none(),
            "row removed too"
        );
    }
    let (state, ..) = store
        .item_state(Source::Jmafile, &stuck.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state, "pending",
        "an item still in the queue is never removed"
    );
    let f = fetches(&sim);
    assert!(
        old.iter().all(|i| f.get(&i.id) == Some(&1)),
        "removed items are not fetched again"
    );
    // Empty folders go too; the folder of the fresh items stays.
    let concat_dir = env
        .data_dir
        .join(old_concat.expected[0].rel_path.rsplit_once('/').unwrap().0);
    assert!(!concat_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_low_disk_guard_pauses_and_resumes_without_loss() {
    let env = Env::new();
    std::fs::create_dir_all(&env.data_dir).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&env.data_dir)
        .output();
    match mount {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs for the data dir (needs root): {other:?}"
            );
            return;
        }
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(env.data_dir.clone());
    let sim = sim(200).await;
    // Leave about 8 MiB free; min_free is 16 MiB.
    let ballast = env.data_dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 40 << 20]).unwrap();
    let items: Vec<_> = (0..5)
        .map(|_| {
            sim.add(ItemSpec {
                size: 100_000,
                ..ItemSpec::default()
            })
        })
        .collect();
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__STORAGE__MIN_FREE".into(), "16 MiB".into()));
    let log = env.root.path().join("out.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(15), "the pause is logged", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("below storage.min_free")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fetches(&sim).is_empty(),
        "nothing fetched while low on space"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("below storage.min_free").count(),
        1,
        "logged once, not per check"
    );

    std::fs::remove_file(&ballast).unwrap();
    wait_until(
        Duration::from_secs(30),
        "everything lands once space returns",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("downloads resume"), "{text}");
    assert!(fetches(&sim).values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_runs_once_per_item_is_retried_after_failure_and_survives_a_restart() {
    let sim = sim(200).await;
    let env = Env::new();
    let log = env.root.path().join("hook.log");
    let flags = env.root.path().join("flags");
    std::fs::create_dir_all(&flags).unwrap();
    let script = env.root.path().join("hook.sh");
    // Fails once for the item tagged "fail"; sleeps for the one tagged "slow" (so a restart
    // interrupts it); otherwise appends "<id> <path>" to the log.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\ncase \"$JMA_POLLER_ID\" in\n  {{FAIL}}) if [ ! -e {flags}/failed ]; then touch {flags}/failed; echo 'no space on the uploader' >&2; exit 7; fi;;\n  {{SLOW}}) if [ ! -e {flags}/slept ]; then touch {flags}/slept; sleep 30; fi;;\nesac\necho \"$JMA_POLLER_ID $JMA_POLLER_KIND $1\" >> {log}\n",
            flags = flags.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let items: Vec<_> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    let concat = sim.add(ItemSpec {
        kind: Kind::Concat { children: 2 },
        ..ItemSpec::default()
    });
    let text = std::fs::read_to_string(&script)
        .unwrap()
        .replace("{FAIL}", &items[1].id)
        .replace("{SLOW}", &items[2].id);
    std::fs::write(&script, text).unwrap();
    let mut settings = env.settings(&sim);
    settings.hooks.on_file = vec!["/bin/sh".into(), script.display().to_string()];
    settings.hooks.timeout = Duration::from_secs(60);
    let daemon = Daemon::start(settings.clone());
    wait_until(
        Duration::from_secs(20),
        "the slow hook has started",
        || async { flags.join("slept").exists() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.stop().await; // interrupts the slow hook
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(40), "every hook ran", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        items.iter().chain([&concat]).all(|i| text.contains(&i.id))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;

    let text = std::fs::read_to_string(&log).unwrap();
    for item in items.iter().chain([&concat]) {
        let lines: Vec<_> = text.lines().filter(|l| l.starts_with(&item.id)).collect();
        assert_eq!(
            lines.len(),
            1,
            "one successful run for {}: {lines:?}",
            item.serial
        );
        let path = env.data_dir.join(
            item.expected[0]
                .rel_path
                .trim_end_matches(|c| c != '/')
                .trim_end_matches('/'),
        );
        let expected_path = if item.expected.len() > 1 {
            path
        } else {
            env.data_dir.join(&item.expected[0].rel_path)
        };
        assert!(
            lines[0].ends_with(&expected_path.display().to_string()),
            "{} vs {}",
            lines[0],
            expected_path.display()
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with(&concat.id) && l.contains(" folder "))
    );
    let report = env.store().await.status().await.unwrap();
    assert_eq!(report.hooks, vec![("done".to_owned(), 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_lists_and_pages_the_accounts_websocket_sessions() {
    let sim = sim(200).await;
    let mut ids = Vec::new();
    for i in 0..130 {
        let status = ["open", "waiting", "closed"][i % 3];
        ids.push(sim.add_socket(status, &format!("app-{i}")));
    }
    // One open socket limited to two data types; the others take every type (null).
    sim.set_socket_types(ids[3], &["VXSE51", "VXSE53"]);
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("JMA_POLLER__API__BASE_URL", sim.base_url())
            .env("JMA_POLLER__API__KEY", sim.key())
            .output()
            .unwrap()
    };
    let out = run(&["sockets", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.len(), 130, "two pages followed");
    let pages = sim
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/socket")
        .count();
    assert_eq!(pages, 2);
    let out = run(&["sockets", "--status", "open"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("id"), "{text}");
    assert_eq!(text.lines().count(), 1 + 44, "{text}");
    assert!(text.lines().skip(1).all(|l| l.contains(" open ")));
    // id status app start end ping ip server types classifications
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|c| !c.trim().is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "id",
            "status",
            "app",
            "start",
            "end",
            "last ping",
            "ip",
            "server",
            "types",
            "classifications"
        ],
        "{text}"
    );
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 10, "{line}");
        assert_eq!(cols[4], "-", "an open socket has no end: {line}");
        assert_eq!(cols[7], "websocket-03", "the server is shown: {line}");
        let want = if cols[0] == ids[3].to_string() {
            "VXSE51,VXSE53"
        } else {
            "all"
        };
        assert_eq!(cols[8], want, "types, or all when null: {line}");
        assert_eq!(cols[9], "telegram.earthquake,eew.forecast", "{line}");
    }
    let out = run(&["sockets", "--status", "closed"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1 + 43, "{text}");
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 10, "{line}");
        assert_eq!(
            cols[3], cols[4],
            "a closed socket shows when it ended: {line}"
        );
        assert!(cols[4].starts_with("20"), "{line}");
        assert_eq!(cols[7], "-", "a closed socket has no server: {line}");
    }
    let out = run(&["sockets", "--status", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_lines_carry_syslog_priorities() {
    use std::os::unix::fs::MetadataExt;
    let sim = sim(200).await;
    sim.faults().list.push_back(ListFault::Status(503));
    let env = Env::new();
    let items = vec![sim.add(ItemSpec::default())];
    let log = env.root.path().join("journal.log");
    std::fs::write(&log, b"").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut envs = env.binary_env(&sim);
    envs.retain(|(k, _)| k != "JMA_POLLER__LOG__FORMAT");
    envs.push((
        "JOURNAL_STREAM".into(),
        format!("{}:{}", meta.dev(), meta.ino()),
    ));
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(20), "the item lands", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    child.stop("-TERM", STOP_LIMIT).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("poll failed")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("landed")),
        "{text}"
    );
}
