//! Per-id politeness: the data hosts block an id that is requested again soon (429 `Don't try
//! to get the same data.`, about 40 minutes, that id only). No id is requested sooner than
//! `download.refetch_delay` after its previous request, whatever queued it again; a same-id
//! block waits `download.same_id_backoff` for that id alone, across restarts too.

use jma_poller::state::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use jma_poller::sim::{DataFault, ItemSpec, Kind, Request, Sim, SimConfig, SimItem};
use jma_poller::state::Source;

use crate::common::*;

/// A simulator that blocks an id re-fetched within `window` for `block`, as the live data
/// hosts do; no per-host budgets.
async fn blocking_sim(window: Duration, block: Duration) -> Sim {
    init_logs();
    Sim::start(SimConfig {
        pooling_interval_ms: 150,
        data_limit: None,
        api_limit: None,
        repeat_fetch_window: Some(window),
        repeat_fetch_block: block,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// The body requests for `id`, in the order the simulator received them.
fn requests_of(sim: &Sim, id: &str) -> Vec<Request> {
    sim.requests()
        .into_iter()
        .filter(|r| r.id.as_deref() == Some(id))
        .collect()
}

/// The shortest time between two requests of the same id (from one's arrival to the next
/// one's), over every id requested more than once.
fn shortest_same_id_gap(sim: &Sim) -> Option<Duration> {
    let mut by_id: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in sim.requests() {
        if let Some(id) = r.id {
            by_id.entry(id).or_default().push(r.received);
        }
    }
    by_id
        .values()
        .flat_map(|times| times.windows(2).map(|w| w[1].duration_since(w[0])))
        .min()
}

fn has_same_id_429(sim: &Sim) -> bool {
    sim.requests()
        .iter()
        .any(|r| r.id.is_some() && r.status == 429)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_fetched_again_only_after_refetch_delay_and_once_per_fault() {
    let delay = Duration::from_secs(2);
    // The simulator blocks any id re-fetched within the delay: a quicker retry would show up
    // as a 429 (and the item would not land for 40 minutes).
    let sim = blocking_sim(delay, Duration::from_secs(2400)).await;
    let env = Env::new();
    let gzip = ItemSpec {
        kind: Kind::Gzip,
        size: 200_000,
        ..ItemSpec::default()
    };
    let concat = ItemSpec {
        kind: Kind::Concat { children: 3 },
        size: 40_000,
        ..ItemSpec::default()
    };
    let plans: Vec<(ItemSpec, Vec<DataFault>)> = vec![
        (gzip.clone(), vec![DataFault::Truncate(20_000)]),
        (gzip.clone(), vec![DataFault::Corrupt]),
        (concat.clone(), vec![DataFault::Corrupt, DataFault::Corrupt]),
        (
            gzip.clone(),
            vec![DataFault::Truncate(1_000), DataFault::Corrupt],
        ),
        (gzip.clone(), vec![DataFault::Status(503)]),
        (concat, vec![DataFault::Truncate(5_000)]),
        (
            gzip,
            vec![
                DataFault::Status(500),
                DataFault::Truncate(50_000),
                DataFault::Corrupt,
            ],
        ),
    ];
    let mut faulty: Vec<(SimItem, usize)> = Vec::new();
    for (spec, faults) in plans {
        let item = sim.add(spec);
        let n = faults.len();
        sim.faults()
            .data_for
            .insert(item.id.clone(), VecDeque::from(faults));
        faulty.push((item, n));
    }
    let clean: Vec<_> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    let mut settings = env.settings(&sim);
    settings.download.refetch_delay = delay;
    settings.download.max_attempts = 6;
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(60),
        "every item lands (or a same-id 429 shows a re-fetch came too soon)",
        || async {
            has_same_id_429(&sim)
                || (faulty.iter().all(|(i, _)| landed(&env.data_dir, i))
                    && all_landed(&env.data_dir, &clean))
        },
    )
    .await;
    daemon.stop().await;

    assert!(
        !has_same_id_429(&sim),
        "an id was requested again within {delay:?}: {:?}",
        sim.requests()
            .iter()
            .filter(|r| r.status == 429)
            .collect::<Vec<_>>()
    );
    for (item, _) in &faulty {
        let times: Vec<Instant> = requests_of(&sim, &item.id)
            .iter()
            .map(|r| r.received)
            .collect();
        for w in times.windows(2) {
            let gap = w[1].duration_since(w[0]);
            assert!(
                gap >= delay,
                "serial {} requested again {gap:?} after the previous request",
                item.serial
            );
        }
    }
    let f = fetches(&sim);
    let mut requests = 0;
    let mut injected = 0;
    for (item, n) in &faulty {
        let got = f.get(&item.id).copied().unwrap_or(0);
        assert!(
            got <= 1 + n,
            "serial {}: {got} requests for {n} injected fault(s)",
            item.serial
        );
        requests += got;
        injected += n;
    }
    for item in &clean {
        assert_eq!(f.get(&item.id), Some(&1), "a clean item is fetched once");
        requests += 1;
    }
    let landed = faulty.len() + clean.len();
    eprintln!(
        "politeness: {landed} items landed, {injected} faults injected, {requests} body requests \
         ({:.3} per landed item; bound {:.3}), shortest same-id gap {:?} (refetch_delay {delay:?})",
        requests as f64 / landed as f64,
        (landed + injected) as f64 / landed as f64,
        shortest_same_id_gap(&sim)
    );
    assert!(requests <= landed + injected);
    assert!(tmp_leftovers(&env.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_id_block_holds_that_id_alone_and_leaves_the_data_budget_alone() {
    // A re-fetch within 30 s is blocked for 12 s; the daemon retries a broken body after 2 s,
    // so its second request is blocked, and it then waits 20 s for that id.
    let sim = blocking_sim(Duration::from_secs(30), Duration::from_secs(12)).await;
    let env = Env::new();
    let blocked = sim.add(ItemSpec {
        kind: Kind::Gzip,
        size: 100_000,
        ..ItemSpec::default()
    });
    sim.faults().data_for.insert(
        blocked.id.clone(),
        VecDeque::from([DataFault::Truncate(10_000)]),
    );
    let backoff = Duration::from_secs(20);
    let mut settings = env.settings(&sim);
    settings.download.refetch_delay = Duration::from_secs(2);
    settings.download.same_id_backoff = backoff;
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(20),
        "the re-fetch of the broken item is blocked",
        || async { requests_of(&sim, &blocked.id).len() == 2 },
    )
    .await;
    assert_eq!(requests_of(&sim, &blocked.id)[1].status, 429);

    // Other ids go on while that one waits. Had the block paused the data budget (for 30 s,
    // a plain 429's pause), nothing would be fetched before the blocked item's own retry
    // (20 s), which, being the oldest, would then go first.
    let others: Vec<_> = (0..6).map(|_| sim.add(ItemSpec::default())).collect();
    wait_until(Duration::from_secs(60), "the other items land", || async {
        all_landed(&env.data_dir, &others)
    })
    .await;
    assert_eq!(
        requests_of(&sim, &blocked.id).len(),
        2,
        "the other items landed while the blocked id waited"
    );
    let store = env.store().await;
    let (state, attempts, error, _) = store
        .item_state(Source::Jmafile, &blocked.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("pending", 1),
        "the broken body counts as an attempt, the block does not"
    );
    assert!(error.unwrap().contains("same data"));
    let waiting = store.status().await.unwrap().waiting;
    store.close().await;
    assert_eq!(waiting.items.len(), 1, "{waiting:?}");
    assert_eq!(waiting.items[0].id, blocked.id);
    assert_eq!(waiting.items[0].reason.as_str(), "same_id");

    wait_until(
        Duration::from_secs(60),
        "the blocked item lands once its wait is over",
        || async { landed(&env.data_dir, &blocked) },
    )
    .await;
    daemon.stop().await;
    let log = requests_of(&sim, &blocked.id);
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 200], "truncated, blocked, served");
    let waited = log[2].received.duration_since(log[1].answered);
    assert!(
        waited >= backoff,
        "requested again {waited:?} after the block"
    );
    for item in &others {
        assert_eq!(fetches(&sim).get(&item.id), Some(&1));
    }
    let all_429s = sim.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(all_429s, 1, "no other id was ever blocked");
}

/// The real binary is killed with `kill -9` right after a same-id block; started again, it
/// does not request that id before its wait is over, and `status` and `/metrics` show the
/// waiting id meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_id_wait_survives_kill_9_and_status_and_metrics_show_it() {
    let sim = blocking_sim(Duration::from_secs(30), Duration::from_secs(10)).await;
    let env = Env::new();
    let blocked = sim.add(ItemSpec {
        kind: Kind::Gzip,
        size: 100_000,
        ..ItemSpec::default()
    });
    sim.faults().data_for.insert(
        blocked.id.clone(),
        VecDeque::from([DataFault::Truncate(10_000)]),
    );
    let backoff = Duration::from_secs(15);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut envs = env.binary_env(&sim);
    envs.extend([
        ("JMA_POLLER__DOWNLOAD__REFETCH_DELAY".into(), "2s".into()),
        ("JMA_POLLER__DOWNLOAD__SAME_ID_BACKOFF".into(), "15s".into()),
        (
            "JMA_POLLER__SERVER__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ),
    ]);
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    let blocked_line = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"event\":\"same_id_blocked\""))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // The WARN line is written after the wait is committed.
    wait_until(
        Duration::from_secs(20),
        "the same-id block is logged",
        || async { !blocked_line().is_empty() },
    )
    .await;
    child.kill9();
    let lines = blocked_line();
    assert_eq!(lines.len(), 1, "one WARN line: {lines:?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["id"], blocked.id.as_str());
    assert_eq!(line["serial"], blocked.serial);
    assert_eq!(line["classification"], blocked.classification.as_str());
    assert!(
        line["until"].as_str().is_some_and(|u| u.ends_with('Z')),
        "{line}"
    );

    // `status` lists it, with the reason and when it is due.
    let data_dir = env.data_dir.display().to_string();
    let status = |json: bool| {
        let mut args = vec!["status"];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(bin())
            .args(&args)
            .env("JMA_POLLER__STORAGE__DATA_DIR", &data_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = status(false);
    assert!(
        text.contains("waiting before the next request: 1 on same_id"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&blocked.id) && l.contains("same_id: due in")),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let waiting = &v["waiting"];
    assert_eq!(waiting["items"][0]["id"], blocked.id.as_str(), "{waiting}");
    assert_eq!(waiting["items"][0]["reason"], "same_id");
    assert_eq!(waiting["counts"][0]["items"], 1);
    assert!(
        waiting["items"][0]["due_ms"].as_i64().unwrap() > jma_poller::state::now_ms(),
        "{waiting}"
    );

    // Started again: other items land, the blocked id is not requested meanwhile.
    let restarted = Instant::now();
    let mut child = spawn_bin(&["run"], &envs, &log);
    let others: Vec<_> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    wait_until(
        Duration::from_secs(30),
        "other items land after the restart",
        || async { all_landed(&env.data_dir, &others) },
    )
    .await;
    assert_eq!(requests_of(&sim, &blocked.id).len(), 2);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(
        gauge("jma_poller_items_waiting{reason=\"same_id\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        gauge("jma_poller_items_waiting{reason=\"refetch_delay\"}"),
        Some(0.0),
        "{metrics}"
    );
    let next_due = gauge("jma_poller_items_waiting_next_due_timestamp_seconds ").unwrap();
    assert!(
        next_due * 1000.0 > jma_poller::state::now_ms() as f64,
        "{metrics}"
    );

    wait_until(
        Duration::from_secs(60),
        "the blocked item lands once its wait is over",
        || async { landed(&env.data_dir, &blocked) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let requests = requests_of(&sim, &blocked.id);
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 200], "truncated, blocked, served");
    let waited = requests[2].received.duration_since(requests[1].answered);
    assert!(
        waited >= backoff,
        "requested {waited:?} after the block, across a kill -9 (restarted {:?} after it)",
        restarted.duration_since(requests[1].answered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_on_a_just_failed_item_still_waits_out_refetch_delay() {
    let sim = sim(150).await;
    let env = Env::new();
    let gone = sim.add(ItemSpec::default());
    sim.faults()
        .data_for
        .insert(gone.id.clone(), [DataFault::Status(404)].into());
    let delay = Duration::from_secs(6);
    let mut settings = env.settings(&sim);
    settings.download.refetch_delay = delay;
    let daemon = Daemon::start(settings);
    let store_path = env.data_dir.join("state.sqlite");
    wait_until(Duration::from_secs(20), "the item fails", || async {
        let Ok(store) = jma_poller::state::Store::open_read_only(&store_path).await else {
            return false;
        };
        let state = store.item_state(Source::Jmafile, &gone.id).await;
        store.close().await;
        matches!(state, Ok(Some((s, ..))) if s == "failed")
    })
    .await;
    let data_dir = env.data_dir.display().to_string();
    let out = std::process::Command::new(bin())
        .args(["retry-failed"])
        .env("JMA_POLLER__STORAGE__DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failed item(s) queued again"));
    let out = std::process::Command::new(bin())
        .args(["status", "--json"])
        .env("JMA_POLLER__STORAGE__DATA_DIR", &data_dir)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["waiting"]["items"][0]["id"], gone.id.as_str(), "{v}");
    assert_eq!(v["waiting"]["items"][0]["reason"], "refetch_delay");
    wait_until(Duration::from_secs(30), "the queued item lands", || async {
        landed(&env.data_dir, &gone)
    })
    .await;
    daemon.stop().await;
    let requests = requests_of(&sim, &gone.id);
    assert_eq!(requests.len(), 2);
    let gap = requests[1].received.duration_since(requests[0].received);
    assert!(
        gap >= delay,
        "requested again {gap:?} after failing, refetch_delay {delay:?}"
    );
}
