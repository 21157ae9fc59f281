//! HTTP 402 `No contract.` on the lists: refused everywhere at start stops the real binary with
//! exit code 3 and one message naming every source; refused in part (one archive
//! classification) or later, the refused source fails `/readyz` with the reason, logs one ERROR
//! line and is not asked again before its 15-minute retry, while everything else lands.

use std::time::{Duration, Instant};

use jma_poller::poll::archive::jst_today;
use jma_poller::sim::{ItemSpec, SimArchive};

use crate::common::*;
use crate::ops::{free_port, get};

fn archives_landed(env: &Env, archives: &[SimArchive]) -> bool {
    archives.iter().all(|a| {
        a.expected.iter().all(|f| {
            std::fs::read(env.data_dir.join(&f.rel_path)).is_ok_and(|b| b == f.bytes.as_ref())
        })
    })
}

/// Archive list calls that asked for exactly `classifications` (in any order), and their
/// answers.
fn archive_lists(sim: &jma_poller::sim::Sim, classification: &str) -> Vec<u16> {
    sim.requests()
        .into_iter()
        .filter(|r| r.path == "/v2/archive")
        .filter(|r| {
            r.query
                .split('&')
                .any(|kv| kv == format!("classification={classification}"))
        })
        .map(|r| r.status)
        .collect()
}

/// The JSON log lines of the real binary whose `event` is `event`.
fn events(log: &str, event: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_contract_for_any_source_at_start_exits_3_naming_each_source_once() {
    let sim = sim(200).await;
    sim.config().no_contract = vec!["jmafile".into(), "telegram.earthquake".into()];
    sim.add(ItemSpec::default());
    sim.add_archive_days(&["telegram.earthquake"], 2);
    let env = Env::new();
    let log = env.root.path().join("out.log");
    let mut binary_env = env.binary_env(&sim);
    binary_env.extend([
        ("JMA_POLLER__ARCHIVE__ENABLED".into(), "true".into()),
        (
            "JMA_POLLER__ARCHIVE__CLASSIFICATIONS".into(),
            "telegram.earthquake".into(),
        ),
    ]);
    let mut child = spawn_bin(&["run"], &binary_env, &log);
    let status = child
        .exit_within(Duration::from_secs(20), "the daemon exits")
        .await;
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "{out}");
    let last = out.lines().last().unwrap_or_default();
    for needle in [
        "contract",
        "jmafile stream jmafile",
        "archive:telegram.earthquake",
        "No contract.",
        "archive.classifications",
    ] {
        assert!(last.contains(needle), "{needle:?} in the last line: {last}");
    }
    assert_eq!(
        out.matches("covers none of the sources").count(),
        1,
        "the fatal reason is printed once: {out}"
    );
    // Each source was asked once: a refusal is not hammered before the daemon gives up.
    let mut lists: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.is_list())
        .map(|r| (r.path, r.status))
        .collect();
    lists.sort();
    assert_eq!(
        lists,
        vec![
            ("/v2/archive".to_owned(), 402),
            ("/v2/jmafile".to_owned(), 402)
        ],
        "one refused call per source, nothing else"
    );
    assert!(
        sim.requests().iter().all(|r| r.id.is_none()),
        "nothing downloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_archive_classification_without_contract_fails_readyz_and_the_rest_lands() {
    let sim = sim(200).await;
    sim.config().no_contract = vec!["telegram.weather".into()];
    let wanted = sim.add_archive_days(&["telegram.earthquake", "telegram.volcano"], 2);
    let refused = sim.add_archive_days(&["telegram.weather"], 2);
    let items: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let env = Env::new();
    let log = env.root.path().join("out.log");
    let port = free_port();
    let mut binary_env = env.binary_env(&sim);
    binary_env.extend([
        ("JMA_POLLER__ARCHIVE__ENABLED".into(), "true".into()),
        ("JMA_POLLER__ARCHIVE__CHECK_INTERVAL".into(), "1s".into()),
        (
            "JMA_POLLER__ARCHIVE__CLASSIFICATIONS".into(),
            "telegram.earthquake,telegram.weather,telegram.volcano".into(),
        ),
        (
            "JMA_POLLER__SERVER__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ),
    ]);
    let mut child = spawn_bin(&["run"], &binary_env, &log);
    wait_until(
        Duration::from_secs(40),
        "the covered archives and the jmafile items land",
        || async { archives_landed(&env, &wanted) && all_landed(&env.data_dir, &items) },
    )
    .await;
    // A later day of a covered classification is still picked up by the regular checks.
    let later = vec![sim.add_archive(jma_poller::sim::ArchiveSpec::new(
        "telegram.earthquake",
        jst_today(),
    ))];
    wait_until(Duration::from_secs(20), "a later archive lands", || async {
        archives_landed(&env, &later)
    })
    .await;
    let (code, body) = get(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("archive:telegram.weather") && body.contains("no contract"),
        "/readyz names the refused classification: {body}"
    );
    child.stop("-TERM", STOP_LIMIT).await;
    let out = std::fs::read_to_string(&log).unwrap();
    let errors = events(&out, "no_contract");
    assert_eq!(errors.len(), 1, "one ERROR line: {errors:?}");
    assert_eq!(errors[0]["level"], "ERROR");
    assert_eq!(errors[0]["classification"], "telegram.weather");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("archive.classifications") && message.contains("15 minutes"),
        "{message}"
    );
    // Asked on its own once, after the combined call was refused; never again within the
    // 15 minutes; nothing of it downloaded.
    assert_eq!(archive_lists(&sim, "telegram.weather"), vec![402]);
    let refused_ids: Vec<&str> = refused.iter().map(|a| a.id.as_str()).collect();
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.id.as_deref().is_none_or(|id| !refused_ids.contains(&id))),
        "nothing of the refused classification fetched"
    );
    for a in &wanted {
        assert!(!archive_lists(&sim, &a.classification).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_withdrawn_mid_run_fails_readyz_and_archives_go_on() {
    let sim = sim(200).await;
    let first: Vec<_> = (0..2).map(|_| sim.add(ItemSpec::default())).collect();
    let env = Env::new();
    let mut settings = env.settings(&sim);
    settings.archive.enabled = true;
    settings.archive.check_interval = Duration::from_secs(1);
    settings.archive.classifications = vec!["telegram.earthquake".into()];
    let (daemon, addr) = Daemon::serve(settings).await;
    let port = addr.port();
    wait_until(Duration::from_secs(20), "first items land", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    sim.config().no_contract = vec!["jmafile".into()];
    let withdrawn = Instant::now();
    wait_until(Duration::from_secs(15), "/readyz turns 503", || async {
        get(&format!("http://127.0.0.1:{port}/readyz")).await.0 == 503
    })
    .await;
    let (_, body) = get(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert!(
        body.contains("jmafile") && body.contains("no contract"),
        "{body}"
    );
    // The archives go on: a new one lands after the jmafile stream was refused.
    let archive = vec![sim.add_archive(jma_poller::sim::ArchiveSpec::new(
        "telegram.earthquake",
        jst_today(),
    ))];
    wait_until(Duration::from_secs(20), "the new archive lands", || async {
        archives_landed(&env, &archive)
    })
    .await;
    assert!(
        !daemon.handle.is_finished(),
        "a refusal after the start does not stop the daemon"
    );
    let refused_lists = sim
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/jmafile" && r.received > withdrawn)
        .count();
    assert_eq!(
        refused_lists, 1,
        "the refused stream waits 15 minutes before asking again"
    );
    daemon.stop().await;
}
