//! `jma-poller state copy`: a single SQLite node's state moved into PostgreSQL (a throwaway
//! server from `jma_poller::testing::pg`) and back, with the real binary against the
//! simulator. The node then resumes on PostgreSQL with the same data dir and node id and
//! downloads nothing it already had; a target that is not empty is refused.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use jma_poller::sim::{DataFault, ItemSpec, Kind};
use jma_poller::state::postgres::PgTarget;
use jma_poller::state::prelude::*;
use jma_poller::state::{Source, Store};
use jma_poller::testing::pg::PgServer;

use crate::common::*;

/// The binary with `args` and `envs`: (exit code, stdout, stderr).
fn run(args: &[&str], envs: &[(String, String)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status --json`'s item counts by (source, state), on the database `envs` names.
fn status_counts(envs: &[(String, String)]) -> BTreeMap<(String, String), i64> {
    let (code, out, err) = run(&["status", "--json"], envs);
    assert_eq!(code, 0, "status: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["items"].as_i64().unwrap() != 0)
        .map(|c| {
            (
                (
                    c["source"].as_str().unwrap().to_owned(),
                    c["state"].as_str().unwrap().to_owned(),
                ),
                c["items"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn with(envs: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut envs = envs.to_vec();
    envs.push((key.to_owned(), value.to_owned()));
    envs
}

fn count(counts: &BTreeMap<(String, String), i64>, state: &str) -> i64 {
    counts
        .get(&("jmafile".into(), state.into()))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_node_copied_into_postgres_resumes_there_without_downloading_anything_again() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.create_database().await;
    let shown = PgTarget::parse(&url, None).unwrap().shown().to_owned();
    let sim = sim(100).await;
    let env = Env::new();
    let mut items: Vec<_> = (0..12)
        .map(|i| {
            sim.add(ItemSpec {
                kind: if i % 3 == 0 {
                    Kind::Concat { children: 3 }
                } else {
                    Kind::Plain
                },
                ..ItemSpec::default()
            })
        })
        .collect();
    let gone = sim.add(ItemSpec::default());
    sim.faults()
        .data_for
        .insert(gone.id.clone(), [DataFault::Status(404)].into());
    let log = env.root.path().join("daemon.log");
    let node = (
        "JMA_POLLER__CLUSTER__NODE_ID".to_owned(),
        "node-a".to_owned(),
    );
    let mut envs = env.binary_env(&sim);
    envs.push(node.clone());

    // One node on SQLite: items land, one fails for good (404).
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(
        Duration::from_secs(60),
        "items land and the 404 one fails",
        || async {
            if !all_landed(&env.data_dir, &items) {
                return false;
            }
            let store = env.store().await;
            let state = store.item_state(Source::Jmafile, &gone.id).await.unwrap();
            store.close().await;
            state.is_some_and(|s| s.0.as_str() == "failed")
        },
    )
    .await;

    // While it runs, the copy is refused: the data dir is locked.
    let (code, _, err) = run(&["state", "copy", "--to", &url], &envs);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already running"), "{err}");

    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let on_sqlite = status_counts(&envs);
    assert_eq!(count(&on_sqlite, "done"), 12, "{on_sqlite:?}");
    assert_eq!(count(&on_sqlite, "failed"), 1, "{on_sqlite:?}");

    // Copy into PostgreSQL.
    let (code, out, err) = run(&["state", "copy", "--to", &url], &envs);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("items 13,") && out.contains("integrity ok"),
        "{out}"
    );
    let pg_envs = with(&envs, "JMA_POLLER__STORAGE__DATABASE", &url);
    assert_eq!(status_counts(&pg_envs), on_sqlite, "the same counts");

    // The same node, same data dir, now on PostgreSQL: new items land, old ones are not
    // fetched again (neither the done ones nor the one that failed for good).
    let before = fetches(&sim);
    let old = items.len();
    for _ in 0..4 {
        items.push(sim.add(ItemSpec::default()));
    }
    let pg_run = with(&pg_envs, "JMA_POLLER__CLUSTER__LEASE", "3s");
    let mut child = spawn_bin(&["run"], &pg_run, &log);
    wait_until(
        Duration::from_secs(60),
        "the new items land on PostgreSQL",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let after = fetches(&sim);
    for item in items[..old].iter().chain([&gone]) {
        assert_eq!(
            after.get(&item.id),
            before.get(&item.id),
            "{}: copied, never fetched again",
            item.id
        );
    }
    for item in &items[old..] {
        assert_eq!(after.get(&item.id), Some(&1), "{}", item.id);
    }
    assert_all_landed(&env.data_dir, &items);
    let on_pg = status_counts(&pg_envs);
    assert_eq!(count(&on_pg, "done"), 16, "{on_pg:?}");
    assert_eq!(count(&on_pg, "failed"), 1, "{on_pg:?}");
    let store = Store::open_read_only(PgTarget::parse(&url, None).unwrap())
        .await
        .unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    assert_eq!(store.done_paths().await.unwrap().len(), 16);
    store.close().await;

    // A second copy into the same database is refused, naming it.
    let (code, _, err) = run(&["state", "copy", "--to", &url], &envs);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the target database is not empty") && err.contains(&shown),
        "{err}"
    );

    // And back: PostgreSQL into a new SQLite file keeps every count.
    let back = env.root.path().join("back.sqlite");
    let back = back.display().to_string();
    let (code, out, err) = run(&["state", "copy", "--from", &url, "--to", &back], &envs);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("items 17,"), "{out}");
    let back_envs = with(&envs, "JMA_POLLER__STORAGE__DATABASE", &back);
    assert_eq!(
        status_counts(&back_envs),
        on_pg,
        "the round trip keeps the counts"
    );
    let store = Store::open_read_only(std::path::Path::new(&back))
        .await
        .unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let item = store.item_state(Source::Jmafile, &gone.id).await.unwrap();
    assert_eq!(
        item.map(|s| s.0),
        Some("failed".into()),
        "failed stays failed"
    );
    store.close().await;
}
