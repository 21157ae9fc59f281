//! The real binary as an operator runs it: configuration errors, a refused key, signals,
//! `status` and `check-config`.

use jma_poller::state::prelude::*;
use std::process::Command;
use std::time::{Duration, Instant};

use jma_poller::sim::{DataFault, ItemSpec, Kind};

use crate::common::*;

fn run_bin(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_key_before_any_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("JMA_POLLER__STORAGE__DATA_DIR", data)], "api.key"),
        (
            &[
                ("JMA_POLLER__API__KEY", "k"),
                ("JMA_POLLER__JMAFILE__LIMIT", "500"),
            ],
            "jmafile.limit",
        ),
        (
            &[
                ("JMA_POLLER__API__KEY", "k"),
                ("JMA_POLLER__DOWNLOAD__MAX_SIZE", "lots"),
            ],
            "download.max_size",
        ),
        (
            &[
                ("JMA_POLLER__API__KEY", "k"),
                ("JMA_POLLER__API__TIMEOUT", "-3"),
            ],
            "api.timeout",
        ),
        (
            &[
                ("JMA_POLLER__API__KEY", "k"),
                ("JMA_POLLER__JMAFILE__ENABLD", "true"),
            ],
            "enabld",
        ),
        (
            &[("JMA_POLLER__API__KEY_FILE", "/nonexistent/key")],
            "api.key_file",
        ),
    ];
    for (env, key) in cases {
        let (code, _, err) = run_bin(&["run"], env);
        assert_eq!(code, 2, "{env:?}: {err}");
        assert!(
            err.contains(key),
            "{env:?}: stderr should name {key}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !std::path::Path::new(data).exists(),
        "nothing created before the config is valid"
    );

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[api]\nkey = \"k\"\n[jmafile]\nbackfill = 12\n").unwrap();
    let (code, _, err) = run_bin(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("jmafile.backfill"), "{err}");
}

#[test]
fn check_config_prints_the_effective_config_with_the_key_redacted() {
    let (code, out, err) = run_bin(
        &["check-config"],
        &[
            ("JMA_POLLER__API__KEY", "super-secret-key"),
            ("JMA_POLLER__JMAFILE__TYPES", "RDR_GPV,SRF_GPV,RDR_TYPO"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("key = \"***\""), "{out}");
    assert!(out.contains("RDR_GPV"), "{out}");
    // The streams the types plan, and the entry the catalog does not know.
    assert!(err.contains("jmafile: 3 PuLL stream(s)"), "{err}");
    assert!(err.contains("jmafile:SRF_GPV: type=SRF_GPV"), "{err}");
    assert!(
        err.contains("\"RDR_TYPO\" matches no data identifier"),
        "{err}"
    );
    assert!(!out.contains("super-secret") && !err.contains("super-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_on_the_first_request_exits_non_zero_with_a_clear_message() {
    let sim = sim(200).await;
    sim.faults().reject_key = true;
    let env = Env::new();
    let log = env.root.path().join("out.log");
    let mut child = spawn_bin(&["run"], &env.binary_env(&sim), &log);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the daemon should exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(
        out.contains("refused the key") && out.contains("api.key"),
        "{out}"
    );
    assert!(
        !out.contains(&sim.key()),
        "the key never appears in the output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_later_is_logged_and_retried_with_long_backoff() {
    let sim = sim(100).await;
    let env = Env::new();
    let first = vec![sim.add(ItemSpec::default())];
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(10), "first item", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    sim.faults().reject_key = true;
    let revoked_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !daemon.handle.is_finished(),
        "a later 401 does not stop the daemon"
    );
    let during = sim
        .requests()
        .iter()
        .filter(|r| r.is_list() && r.received > revoked_at)
        .count();
    assert!(
        during <= 1,
        "long backoff after a 401, not {during} polls in 3 s"
    );
    let report = env.store().await.status().await.unwrap();
    assert!(
        report.cursors[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("401")
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_seconds_with_a_download_in_flight_and_leaves_no_temp_files() {
    let sim = sim(200).await;
    let env = Env::new();
    let stalled = sim.add(ItemSpec {
        kind: Kind::Gzip,
        size: 2_000_000,
        ..ItemSpec::default()
    });
    sim.faults().data_for.insert(
        stalled.id.clone(),
        [DataFault::Stall(200_000, Duration::from_secs(3600))].into(),
    );
    let quick: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let log = env.root.path().join("out.log");
    let mut envs = env.binary_env(&sim);
    envs.push(("JMA_POLLER__DOWNLOAD__READ_TIMEOUT".into(), "60s".into()));
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(15),
        "quick items land and the stalled one is in flight",
        || async { all_landed(&env.data_dir, &quick) && fetches(&sim).contains_key(&stalled.id) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !tmp_leftovers(&env.data_dir).is_empty(),
        "a partial file exists mid-download"
    );

    // Within 10 s of SIGTERM, or the test fails with the daemon's last log lines.
    let status = child.stop("-TERM", Duration::from_secs(10)).await;
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        tmp_leftovers(&env.data_dir).is_empty(),
        "no temp files after a clean stop"
    );
    let store = env.store().await;
    let (state, attempts, ..) = store
        .item_state(jma_poller::state::Source::Jmafile, &stalled.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("pending", 0),
        "interrupted, not failed, attempt not counted"
    );
    assert!(out.contains("\"event\":\"stopped\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_database_while_the_daemon_runs() {
    let sim = sim(200).await;
    let env = Env::new();
    let items: Vec<_> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    let gone = sim.add(ItemSpec::default());
    sim.faults()
        .data_for
        .insert(gone.id.clone(), [DataFault::Status(404)].into());
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(15), "items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = env.data_dir.display().to_string();
    let (code, out, err) = run_bin(
        &["status", "--json"],
        &[("JMA_POLLER__STORAGE__DATA_DIR", &data)],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let count = |state: &str| {
        v["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["state"] == state)
            .map(|c| c["items"].as_i64().unwrap())
    };
    assert_eq!(count("done"), Some(4));
    assert_eq!(count("failed"), Some(1));
    assert!(
        v["recent_errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("404")
    );
    assert_eq!(v["cursors"][0]["has_token"], true);
    let (code, out, _) = run_bin(&["status"], &[("JMA_POLLER__STORAGE__DATA_DIR", &data)]);
    assert_eq!(code, 0);
    assert!(out.contains("done") && out.contains("last poll"), "{out}");
    daemon.stop().await;

    let (code, _, err) = run_bin(
        &["status"],
        &[("JMA_POLLER__STORAGE__DATA_DIR", "/nonexistent/dir")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no database yet"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_data_dir_refuses_to_start() {
    let sim = sim(200).await;
    let env = Env::new();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(10), "lock taken", || async {
        env.data_dir.join(".lock").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let envs = env.binary_env(&sim);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, _, err) = run_bin(&["run"], &envs);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another jma-poller is already running"),
        "{err}"
    );
    daemon.stop().await;
}

/// A contract smaller than the default burst: `limits.data_requests = 8` alone is valid (the
/// burst defaults to min(10, data_requests)), `check-config` shows the burst in force, and the
/// daemon starts and mirrors; a burst set above the budget is still refused, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_data_budget_alone_starts_and_an_explicit_burst_above_it_is_refused() {
    let sim = sim(150).await;
    let env = Env::new();
    let items: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    // The test environment turns the data budget off; this test sets it in the file instead.
    let envs: Vec<(String, String)> = env
        .binary_env(&sim)
        .into_iter()
        .filter(|(k, _)| k != "JMA_POLLER__LIMITS__DATA_REQUESTS")
        .collect();
    let small = env.root.path().join("small.toml");
    std::fs::write(&small, "[limits]\ndata_requests = 8\n").unwrap();
    let small_arg = small.to_str().unwrap();
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = run_bin(&["check-config", "--config", small_arg], &env_refs);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data_requests = 8"), "{out}");
    assert!(out.contains("data_burst = 8"), "the burst in force: {out}");
    assert!(out.contains("api_burst = 20"), "{out}");

    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run", "--config", small_arg], &envs, &log);
    wait_until(Duration::from_secs(30), "items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));

    let too_big = env.root.path().join("too-big.toml");
    std::fs::write(&too_big, "[limits]\ndata_requests = 8\ndata_burst = 9\n").unwrap();
    for command in ["check-config", "run"] {
        let (code, _, err) = run_bin(&[command, "--config", too_big.to_str().unwrap()], &env_refs);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(err.contains("limits.data_burst"), "{command}: {err}");
    }
}
