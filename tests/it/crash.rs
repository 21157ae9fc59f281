//! `kill -9` of the real binary at random moments: after a final clean run everything has
//! landed exactly once with the right bytes, no temp files remain, no item that was done was
//! fetched again, and `status` agrees with the disk.

use jma_poller::state::prelude::*;
use std::process::Command;
use std::time::Duration;

use jma_poller::sim::{ItemSpec, Kind};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let sim = sim(100).await;
    let env = Env::new();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let spec = |rng: &mut fastrand::Rng| ItemSpec {
        kind: match rng.u8(..4) {
            0 => Kind::Plain,
            1 => Kind::Concat { children: 3 },
            2 => Kind::Zip,
            _ => Kind::Gzip,
        },
        // Mostly small, some large enough to be killed mid-transfer.
        size: if rng.u8(..5) == 0 {
            rng.usize(500_000..3_000_000)
        } else {
            rng.usize(500..40_000)
        },
        ..ItemSpec::default()
    };
    let mut items: Vec<_> = (0..30).map(|_| sim.add(spec(&mut rng))).collect();
    let log = env.root.path().join("daemon.log");
    let envs = env.binary_env(&sim);
    let kills = 12;
    for round in 0..kills {
        let mut child = spawn_bin(&["run"], &envs, &log);
        for _ in 0..rng.usize(0..6) {
            items.push(sim.add(spec(&mut rng)));
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(100..1200))).await;
        let status = child.kill9();
        assert!(status.code().is_none(), "round {round}: killed by signal");
    }

    // A final run without interference, then a clean stop.
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(90),
        "everything lands after the kills",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));

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

    // A body is fetched again only when a kill interrupted it (at most one per worker per
    // kill) or when the daemon logged a retry (a slow machine can stall a body past the test's
    // 3 s read timeout): nothing done is ever fetched again.
    let f = fetches(&sim);
    let total: usize = f.values().sum();
    let workers = 2;
    let retries = std::fs::read_to_string(&log)
        .unwrap()
        .matches("\"event\":\"retry\"")
        .count();
    assert!(total >= items.len());
    assert!(
        total <= items.len() + kills * workers + retries,
        "{total} body requests for {} items, {kills} kills and {retries} logged retries",
        items.len()
    );

    // The database agrees with the disk.
    let store = env.store().await;
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let done = store.done_paths().await.unwrap();
    assert_eq!(done.len(), items.len());
    for (id, path, bytes) in &done {
        let item = items
            .iter()
            .find(|i| &i.id == id)
            .expect("done row is a known item");
        let on_disk = jma_poller::storage::size_on_disk(&env.data_dir.join(path)).unwrap();
        let expected: usize = item.expected.iter().map(|f| f.bytes.len()).sum();
        assert_eq!(
            (*bytes as u64, on_disk),
            (expected as u64, expected as u64),
            "{path}"
        );
    }
    let data = env.data_dir.display().to_string();
    let out = Command::new(bin())
        .args(["status", "--json"])
        .env("JMA_POLLER__STORAGE__DATA_DIR", &data)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = v["counts"].as_array().unwrap();
    assert_eq!(counts.len(), 1, "only done items: {counts:?}");
    assert_eq!(counts[0]["items"].as_i64(), Some(items.len() as i64));
    let disk_bytes: u64 = files_under(&env.data_dir)
        .iter()
        .map(|f| std::fs::metadata(env.data_dir.join(f)).unwrap().len())
        .sum();
    assert_eq!(counts[0]["bytes"].as_u64(), Some(disk_bytes));
}
