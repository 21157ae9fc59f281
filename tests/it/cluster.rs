//! Several nodes (the real binary, 2–3 processes) on one PostgreSQL and one data dir against the
//! simulator (issue 13): the leader of jmafile is killed with SIGKILL again and again, paused
//! past its lease with SIGSTOP, and PostgreSQL itself is restarted under the nodes. Every
//! time: every item lands exactly once with the right bytes, no id is requested again within
//! `download.refetch_delay`, the account's data budget holds across the nodes, and failover
//! is measured (printed; asserted only as "it happens").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jma_poller::sim::{ItemSpec, Kind, ListFault, Sim, SimConfig, SimItem};
use jma_poller::state::prelude::*;
use jma_poller::state::{DatabaseTarget, Store};
use jma_poller::testing::pg::PgServer;

use crate::common::*;

/// Short leases, so a failover takes seconds in a test (the default is 15 s).
const LEASE: &str = "3s";
/// The account's data budget in these tests, at the simulator and in every node's config.
const DATA_REQUESTS: u32 = 10;
const DATA_WINDOW: Duration = Duration::from_secs(2);

struct Cluster {
    env: Env,
    url: String,
    store: Store,
    nodes: Vec<(String, Option<Proc>)>,
}

impl Cluster {
    async fn start(pg: &PgServer, sim: &Sim, n: usize) -> Cluster {
        let url = pg.create_database().await;
        let target = DatabaseTarget::Postgres(Box::new(
            jma_poller::state::postgres::PgTarget::parse(&url, None).expect("test URL"),
        ));
        let env = Env::new();
        let mut cluster = Cluster {
            env,
            url,
            store: Store::open(target).await.expect("open the test database"),
            nodes: Vec::new(),
        };
        for i in 1..=n {
            let id = format!("n{i}");
            let proc = cluster.spawn(sim, &id);
            cluster.nodes.push((id, Some(proc)));
        }
        cluster
    }

    fn spawn(&self, sim: &Sim, id: &str) -> Proc {
        self.spawn_with(sim, id, &[])
    }

    fn spawn_with(&self, sim: &Sim, id: &str, extra: &[(&str, &str)]) -> Proc {
        let mut envs = self.env.binary_env(sim);
        envs.retain(|(k, _)| k != "JMA_POLLER__LIMITS__DATA_REQUESTS");
        envs.extend(
            [
                ("JMA_POLLER__STORAGE__DATABASE", self.url.as_str()),
                ("JMA_POLLER__CLUSTER__NODE_ID", id),
                ("JMA_POLLER__CLUSTER__LEASE", LEASE),
                ("JMA_POLLER__LIMITS__DATA_REQUESTS", "10"),
                ("JMA_POLLER__LIMITS__DATA_WINDOW", "2s"),
                ("JMA_POLLER__LIMITS__DATA_BURST", "3"),
                ("JMA_POLLER__DOWNLOAD__CONCURRENCY", "2"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        envs.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        spawn_bin(&["run"], &envs, &self.log(id))
    }

    fn log(&self, id: &str) -> std::path::PathBuf {
        self.env.root.path().join(format!("{id}.log"))
    }

    fn proc(&mut self, id: &str) -> &mut Proc {
        self.nodes
            .iter_mut()
            .find(|(n, _)| n == id)
            .and_then(|(_, p)| p.as_mut())
            .expect("a running node")
    }

    /// The node holding a live lease on jmafile, if any (the store's word, not a log's).
    async fn leader(&self) -> Option<String> {
        let now = jma_poller::model::now_ms();
        self.store
            .leaders()
            .await
            .ok()?
            .into_iter()
            .find(|l| l.role == "jmafile" && l.until_ms >= now)
            .map(|l| l.node)
    }

    async fn wait_for_leader(&self, other_than: Option<&str>, within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await
                && Some(l.as_str()) != other_than
            {
                return l;
            }
            assert!(
                start.elapsed() < within,
                "no new leader of jmafile within {within:?} (old: {other_than:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop_all(&mut self) {
        for (id, proc) in &mut self.nodes {
            if let Some(mut p) = proc.take() {
                let status = p.stop("-TERM", STOP_LIMIT).await;
                assert_eq!(status.code(), Some(0), "node {id} stops cleanly");
            }
        }
    }

    /// Everything landed exactly once, with the right bytes, and nothing else is in the dir.
    fn assert_exactly_once(&self, items: &[SimItem]) {
        assert_all_landed(&self.env.data_dir, items);
        let mut expected: Vec<String> = items
            .iter()
            .flat_map(|i| i.expected.iter().map(|f| f.rel_path.clone()))
            .collect();
        expected.sort();
        let mut found = files_under(&self.env.data_dir);
        found.retain(|f| !f.starts_with(".tmp/"));
        assert_eq!(
            found, expected,
            "exactly one copy of each file, nothing else"
        );
        assert!(
            tmp_leftovers(&self.env.data_dir).is_empty(),
            "no partial files after a clean stop"
        );
    }
}

fn sim_config() -> SimConfig {
    SimConfig {
        pooling_interval_ms: 200,
        data_limit: Some((DATA_REQUESTS, DATA_WINDOW)),
        api_limit: None,
        ..SimConfig::default()
    }
}

fn spec(rng: &mut fastrand::Rng) -> ItemSpec {
    ItemSpec {
        kind: match rng.u8(..3) {
            0 => Kind::Plain,
            1 => Kind::Concat { children: 2 },
            _ => Kind::Gzip,
        },
        size: if rng.u8(..6) == 0 {
            rng.usize(300_000..1_500_000)
        } else {
            rng.usize(500..30_000)
        },
        ..ItemSpec::default()
    }
}

/// What the simulator saw, checked against the account-wide promises: never more than the
/// data budget in any window (all nodes together), never the same id again within
/// refetch_delay, and at most `allowed_repeats` repeated bodies in all.
fn assert_polite(sim: &Sim, allowed_repeats: usize) {
    assert_eq!(sim.rate_limited(), 0, "never a 429 from the simulated WAF");
    let data: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.id.is_some())
        .collect();
    let times: Vec<Instant> = data.iter().map(|r| r.received).collect();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < DATA_WINDOW)
            .count();
        worst = worst.max(in_window);
        assert!(
            in_window <= DATA_REQUESTS as usize,
            "{in_window} body requests within {DATA_WINDOW:?} across the nodes"
        );
    }
    let mut by_id: HashMap<&str, Vec<Instant>> = HashMap::new();
    for r in &data {
        by_id
            .entry(r.id.as_deref().unwrap())
            .or_default()
            .push(r.received);
    }
    let mut repeats = 0;
    let mut shortest: Option<Duration> = None;
    for (id, at) in &by_id {
        repeats += at.len() - 1;
        for w in at.windows(2) {
            let gap = w[1].duration_since(w[0]);
            shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            assert!(
                gap >= TEST_REFETCH_DELAY,
                "{id} requested again after {gap:?} (refetch_delay {TEST_REFETCH_DELAY:?})"
            );
        }
    }
    eprintln!(
        "budget: at most {worst} of {DATA_REQUESTS} body requests in any {DATA_WINDOW:?}; {} bodies for {} ids, {repeats} repeated (allowed {allowed_repeats}), shortest same-id gap {shortest:?}",
        data.len(),
        by_id.len()
    );
    assert!(
        repeats <= allowed_repeats,
        "{repeats} repeated downloads, at most {allowed_repeats} allowed"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_again_and_again_loses_nothing_and_lands_everything_once() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let sim = Sim::start(sim_config()).await.unwrap();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut items: Vec<SimItem> = (0..6).map(|_| sim.add(spec(&mut rng))).collect();
    let mut cluster = Cluster::start(&pg, &sim, 3).await;
    let kills = 10;
    let mut to_leader = Vec::new();
    let mut to_list = Vec::new();
    for round in 0..kills {
        let leader = cluster.wait_for_leader(None, Duration::from_secs(30)).await;
        for _ in 0..rng.usize(1..5) {
            items.push(sim.add(spec(&mut rng)));
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(200..2500))).await;
        let leader = cluster.leader().await.unwrap_or(leader);
        let killed_at = Instant::now();
        let status = cluster.proc(&leader).kill9();
        assert!(status.code().is_none(), "round {round}: killed by signal");
        let next = cluster
            .wait_for_leader(Some(&leader), Duration::from_secs(30))
            .await;
        to_leader.push(killed_at.elapsed());
        // Polling resumes when the simulator sees a list call again.
        let start = Instant::now();
        while !sim
            .requests()
            .iter()
            .any(|r| r.is_list() && r.received > killed_at + to_leader[round])
        {
            assert!(start.elapsed() < Duration::from_secs(30), "polling resumed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        to_list.push(killed_at.elapsed());
        eprintln!(
            "round {round}: killed leader {leader}; {next} leads after {:?}, lists after {:?}",
            to_leader[round], to_list[round]
        );
        // The killed node comes back (same id): it waits out its own registration, then
        // stands by.
        let proc = cluster.spawn(&sim, &leader);
        *cluster
            .nodes
            .iter_mut()
            .find(|(n, _)| *n == leader)
            .map(|(_, p)| p)
            .unwrap() = Some(proc);
    }
    for _ in 0..3 {
        items.push(sim.add(spec(&mut rng)));
    }
    wait_until(Duration::from_secs(120), "everything lands", || async {
        all_landed(&cluster.env.data_dir, &items)
    })
    .await;
    cluster.stop_all().await;
    eprintln!(
        "failover over {kills} kills: new leader after median {:?}, worst {:?}; polling resumed after median {:?}, worst {:?}",
        median(to_leader.clone()),
        to_leader.iter().max().unwrap(),
        median(to_list.clone()),
        to_list.iter().max().unwrap()
    );
    cluster.assert_exactly_once(&items);
    // A kill interrupts at most its node's workers' downloads (2 per node).
    assert_polite(&sim, kills * 2);
    // Every node took part: downloads came from more than the leaders.
    let nodes = cluster.store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_commits_nothing_stale_when_it_wakes() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let sim = Sim::start(sim_config()).await.unwrap();
    let mut items: Vec<SimItem> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    let mut cluster = Cluster::start(&pg, &sim, 2).await;
    let old = cluster.wait_for_leader(None, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(30), "the first items land", || async {
        all_landed(&cluster.env.data_dir, &items)
    })
    .await;
    // The leader's next list call is answered late; it is stopped while waiting for it, so
    // the answer sits in its socket until it wakes, long after it lost the lease.
    items.push(sim.add(ItemSpec::default()));
    let lists_before = sim.requests().iter().filter(|r| r.is_list()).count();
    sim.faults()
        .list
        .push_back(ListFault::Delay(Duration::from_millis(1500)));
    wait_until(Duration::from_secs(10), "the slow list call", || async {
        sim.requests().iter().filter(|r| r.is_list()).count() > lists_before
            || sim.faults().list.is_empty()
    })
    .await;
    cluster.proc(&old).signal("-STOP");
    let stopped_at = Instant::now();
    let new = cluster
        .wait_for_leader(Some(&old), Duration::from_secs(30))
        .await;
    let failover = stopped_at.elapsed();
    for _ in 0..4 {
        items.push(sim.add(ItemSpec::default()));
    }
    wait_until(
        Duration::from_secs(60),
        "the new leader lands the new items",
        || async { all_landed(&cluster.env.data_dir, &items) },
    )
    .await;
    let high = |c: Option<jma_poller::model::Cursor>| c.and_then(|c| c.high_serial);
    let before_wake = high(cluster.store.cursor("jmafile").await.unwrap());
    assert!(before_wake.is_some());
    cluster.proc(&old).signal("-CONT");
    // Watch the cursor while the old leader wakes up and finds its token stale.
    let watch_until = Instant::now() + Duration::from_secs(6);
    let mut seen = before_wake;
    while Instant::now() < watch_until {
        let now = high(cluster.store.cursor("jmafile").await.unwrap());
        assert!(now >= seen, "the cursor went back from {seen:?} to {now:?}");
        seen = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.leader().await.as_deref(), Some(new.as_str()));
    assert!(
        cluster.proc(&old).running(),
        "the old leader lives on as a standby"
    );
    for _ in 0..3 {
        items.push(sim.add(ItemSpec::default()));
    }
    wait_until(Duration::from_secs(60), "later items land", || async {
        all_landed(&cluster.env.data_dir, &items)
    })
    .await;
    cluster.stop_all().await;
    let log = std::fs::read_to_string(cluster.log(&old)).unwrap();
    let fenced = log.contains("is stale");
    assert!(
        fenced || log.contains("standing by"),
        "the old leader noticed it lost the lease:\n{}",
        log_tail(&cluster.log(&old), 30)
    );
    eprintln!(
        "SIGSTOP: {new} took over after {failover:?}; the woken leader's commit was {}",
        if fenced {
            "refused by its stale fencing token"
        } else {
            "never attempted (it stood down first)"
        }
    );
    cluster.assert_exactly_once(&items);
    assert_polite(&sim, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_wait_out_a_postgres_restart_and_lose_nothing() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let sim = Sim::start(sim_config()).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut items: Vec<SimItem> = (0..6).map(|_| sim.add(spec(&mut rng))).collect();
    let mut cluster = Cluster::start(&pg, &sim, 2).await;
    cluster.wait_for_leader(None, Duration::from_secs(30)).await;
    for _ in 0..4 {
        items.push(sim.add(spec(&mut rng)));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    pg.stop_immediately();
    // Items keep arriving upstream while the database is down.
    for _ in 0..4 {
        items.push(sim.add(spec(&mut rng)));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (id, p) in &mut cluster.nodes {
        assert!(
            p.as_mut().unwrap().running(),
            "node {id} waits for the database"
        );
    }
    pg.start_again();
    for _ in 0..4 {
        items.push(sim.add(spec(&mut rng)));
    }
    wait_until(
        Duration::from_secs(90),
        "everything lands after the restart",
        || async { all_landed(&cluster.env.data_dir, &items) },
    )
    .await;
    cluster.wait_for_leader(None, Duration::from_secs(30)).await;
    cluster.stop_all().await;
    cluster.assert_exactly_once(&items);
    // The restart may cut downloads short (each node's 2 workers, once).
    assert_polite(&sim, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_the_cluster_and_a_second_process_with_a_live_node_id_is_refused() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let sim = Sim::start(sim_config()).await.unwrap();
    let items: Vec<SimItem> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let mut cluster = Cluster::start(&pg, &sim, 0).await;
    let ports = [crate::ops::free_port(), crate::ops::free_port()];
    for (i, port) in ports.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let listen = format!("127.0.0.1:{port}");
        let proc = cluster.spawn_with(&sim, &id, &[("JMA_POLLER__SERVER__LISTEN", &listen)]);
        cluster.nodes.push((id, Some(proc)));
    }
    let leader = cluster.wait_for_leader(None, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(30), "the items land", || async {
        all_landed(&cluster.env.data_dir, &items)
    })
    .await;
    let port_of = |id: &str| ports[if id == "n1" { 0 } else { 1 }];
    let standby = if leader == "n1" { "n2" } else { "n1" };
    // /readyz: the leader is judged on its polls, the standby on the cluster having a leader.
    for id in [leader.as_str(), standby] {
        let url = format!("http://127.0.0.1:{}/readyz", port_of(id));
        wait_until(Duration::from_secs(30), &format!("{id} ready"), || async {
            crate::ops::get(&url).await.0 == 200
        })
        .await;
    }
    let metrics = |id: &str| {
        let url = format!("http://127.0.0.1:{}/metrics", port_of(id));
        async move { crate::ops::get(&url).await.1 }
    };
    let leading = |m: &str, source: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("jma_poller_leader{{source=\"{source}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    wait_until(
        Duration::from_secs(30),
        "leader gauges on both nodes",
        || async {
            leading(&metrics(&leader).await, "jmafile").as_deref() == Some("1")
                && leading(&metrics(standby).await, "jmafile").as_deref() == Some("0")
        },
    )
    .await;
    assert!(
        metrics(standby)
            .await
            .contains(&format!("jma_poller_node_info{{node_id=\"{standby}\"")),
        "node_info names the node"
    );
    // `status` lists both nodes and who leads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jma-poller"))
        .arg("status")
        .env("JMA_POLLER__STORAGE__DATABASE", &cluster.url)
        .env("JMA_POLLER__STORAGE__DATA_DIR", &cluster.env.data_dir)
        .env("JMA_POLLER__API__KEY", sim.key())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "node n1: live".to_owned(),
        "node n2: live".to_owned(),
        format!("leader of jmafile: {leader}"),
    ] {
        assert!(text.contains(&line), "status shows {line:?}:\n{text}");
    }
    // A second process claiming a live node's id is refused, naming the setting (exit 2).
    let mut twin = cluster.spawn(&sim, standby);
    let status = twin
        .exit_within(Duration::from_secs(30), "a twin of a live node")
        .await;
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(cluster.log(standby)).unwrap();
    assert!(
        log.contains("is in use by another live process"),
        "{}",
        log_tail(&cluster.log(standby), 10)
    );
    // The leader stops cleanly: it gives its roles up, and the standby takes over at once
    // (well within one lease) and counts a failover only for a lease that ran out.
    let stopped = Instant::now();
    let status = cluster.proc(&leader).stop("-TERM", STOP_LIMIT).await;
    assert_eq!(status.code(), Some(0));
    cluster.nodes.retain(|(n, _)| *n != leader);
    let next = cluster
        .wait_for_leader(Some(&leader), Duration::from_secs(10))
        .await;
    eprintln!("clean handover to {next} after {:?}", stopped.elapsed());
    assert_eq!(next, standby);
    cluster.stop_all().await;
}
