//! `jma-poller verify` as an operator runs it (the real binary), beside a running daemon (the
//! real binary too) fed by the simulator: a clean mirror, each kind of damage, `--json`, and
//! `--repair` re-landing each damaged item exactly once after its refetch_delay.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jma_poller::poll::archive::jst_today;
use jma_poller::sim::{ArchiveSpec, ItemSpec, Kind, SimItem};

use crate::common::*;

/// Runs `jma-poller verify ARGS` on the env's data dir: (exit code, stdout, stderr).
fn verify(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("verify")
        .args(args)
        .env_remove("RUST_LOG")
        .env("JMA_POLLER__STORAGE__DATA_DIR", &env.data_dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify_json(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = verify(env, &all);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}): {out}\n{err}"));
    (code, report)
}

/// The folder a concat item lands in.
fn folder_of(item: &SimItem) -> String {
    let child = &item.expected[0].rel_path;
    child[..child.rfind('/').unwrap()].to_owned()
}

fn damaged<'a>(report: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == path)
        .unwrap_or_else(|| panic!("{path} not reported: {report:#}"))
}

/// Seconds between the first and the last body request of `id`, as the simulator saw them.
fn refetch_gap(sim: &jma_poller::sim::Sim, id: &str) -> Duration {
    let times: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.id.as_deref() == Some(id))
        .map(|r| r.received)
        .collect();
    times[times.len() - 1] - times[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_kind_of_damage_and_repair_fetches_each_item_again_once() {
    let sim = sim(200).await;
    let env = Env::new();
    let refetch = Duration::from_secs(6);
    let singles: Vec<SimItem> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    let concat = sim.add(ItemSpec {
        kind: Kind::Concat { children: 3 },
        ..ItemSpec::default()
    });
    let day = sim.add_archive(ArchiveSpec::new(
        "telegram.volcano",
        jst_today() - time::Duration::days(1),
    ));
    let mut envs = env.binary_env(&sim);
    envs.retain(|(k, _)| k != "JMA_POLLER__DOWNLOAD__REFETCH_DELAY");
    envs.push(("JMA_POLLER__DOWNLOAD__REFETCH_DELAY".into(), "6s".into()));
    envs.push(("JMA_POLLER__ARCHIVE__ENABLED".into(), "true".into()));
    envs.push(("JMA_POLLER__ARCHIVE__CHECK_INTERVAL".into(), "1s".into()));
    let log = env.root.path().join("daemon.log");
    let mut daemon = spawn_bin(&["run"], &envs, &log);
    let mut all = singles.clone();
    all.push(concat.clone());
    wait_until(Duration::from_secs(60), "everything lands", || async {
        all_landed(&env.data_dir, &all)
            && day
                .expected
                .iter()
                .all(|f| env.data_dir.join(&f.rel_path).exists())
    })
    .await;

    // Clean: exit 0, every file was hashed when it landed (nothing left to record).
    let (code, report) = verify_json(&env, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["items"], 6, "{report:#}");
    let files = 4 + 3 + day.expected.len() as u64;
    assert_eq!(report["files"], files, "{report:#}");
    assert_eq!(report["digests_recorded"], 0, "{report:#}");
    let (code, out, _) = verify(&env, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("0 missing, 0 changed, 0 incomplete, 0 unowned"),
        "{out}"
    );

    // Damage of every kind.
    let gone = &singles[0].expected[0].rel_path;
    std::fs::remove_file(env.data_dir.join(gone)).unwrap();
    let flipped = &singles[1].expected[0].rel_path;
    let mut bytes = std::fs::read(env.data_dir.join(flipped)).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(env.data_dir.join(flipped), &bytes).unwrap();
    let stray = format!("{}/stray.bin", Path::new(gone).parent().unwrap().display());
    std::fs::write(env.data_dir.join(&stray), b"not ours").unwrap();
    let member = &day.expected[1].rel_path;
    std::fs::remove_file(env.data_dir.join(member)).unwrap();
    let child = &concat.expected[2].rel_path;
    std::fs::remove_file(env.data_dir.join(child)).unwrap();
    // An item older than the month the API keeps cannot be fetched again.
    let old = &singles[2].expected[0].rel_path;
    std::fs::remove_file(env.data_dir.join(old)).unwrap();
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        env.data_dir.join("state.sqlite").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE items SET received_ms = received_ms - 40 * 86400000 WHERE id = ?")
        .bind(&singles[2].id)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let (code, report) = verify_json(&env, &[]);
    assert_eq!(code, 4, "damage has its own exit code: {report:#}");
    assert_eq!(
        (
            &report["missing"],
            &report["changed"],
            &report["incomplete"],
            &report["unowned"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(1)
        ),
        "{report:#}"
    );
    assert_eq!(damaged(&report, gone)["problem"], "missing");
    assert_eq!(damaged(&report, old)["problem"], "missing");
    assert_eq!(damaged(&report, flipped)["problem"], "changed");
    let folder = folder_of(&concat);
    assert_eq!(damaged(&report, &folder)["problem"], "incomplete");
    let day_dir = format!("archive/telegram.volcano/{}", day.date_str());
    assert_eq!(damaged(&report, &day_dir)["problem"], "incomplete");
    assert_eq!(report["unowned_files"], serde_json::json!([stray]));
    let (code, out, _) = verify(&env, &[]);
    assert_eq!(code, 4);
    assert!(out.contains(&format!("unowned    {stray}")), "{out}");
    assert!(
        out.contains(&format!("changed    jmafile {}", singles[1].id)),
        "{out}"
    );

    // Repair while the daemon runs: damaged copies aside, items queued again.
    let (code, report) = verify_json(&env, &["--repair"]);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(report["queued"], 4, "{report:#}");
    assert_eq!(report["unrecoverable"], 1, "{report:#}");
    assert_eq!(
        damaged(&report, old)["repair"]["outcome"],
        "unrecoverable",
        "{report:#}"
    );
    let quarantined = damaged(&report, flipped)["repair"]["quarantined"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(quarantined.starts_with("quarantine/"), "{quarantined}");
    assert_eq!(
        std::fs::read(env.data_dir.join(&quarantined)).unwrap(),
        bytes,
        "the damaged copy is kept, never deleted"
    );
    assert!(
        damaged(&report, gone)["repair"]["quarantined"].is_null(),
        "nothing to move aside for a missing file"
    );
    let mut repaired = vec![singles[0].clone(), singles[1].clone(), concat.clone()];
    wait_until(
        Duration::from_secs(60),
        "repaired items land again",
        || async {
            all_landed(&env.data_dir, &repaired)
                && day
                    .expected
                    .iter()
                    .all(|f| env.data_dir.join(&f.rel_path).exists())
        },
    )
    .await;
    // A few more polls and worker rounds: nothing is fetched a third time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(daemon.stop("-TERM", STOP_LIMIT).await.code(), Some(0));

    repaired.push(singles[3].clone());
    assert_all_landed(&env.data_dir, &repaired);
    let f = fetches(&sim);
    for (item, times) in [
        (&singles[0].id, 2),
        (&singles[1].id, 2),
        (&concat.id, 2),
        (&day.id, 2),
        (&singles[2].id, 1),
        (&singles[3].id, 1),
    ] {
        assert_eq!(f.get(item), Some(&times), "body requests of {item}: {f:?}");
    }
    for id in [&singles[0].id, &singles[1].id, &concat.id, &day.id] {
        let gap = refetch_gap(&sim, id);
        assert!(
            gap >= refetch,
            "{id} was requested again {gap:?} after its previous request, under refetch_delay"
        );
    }
    for f in &day.expected {
        let got = std::fs::read(env.data_dir.join(&f.rel_path)).unwrap();
        assert!(got == f.bytes.as_ref(), "{} re-landed wrong", f.rel_path);
    }

    // Afterwards only what could not be repaired and the stray file (untouched) remain.
    let (code, report) = verify_json(&env, &[]);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(
        (
            &report["missing"],
            &report["changed"],
            &report["incomplete"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "{report:#}"
    );
    assert_eq!(report["unowned_files"], serde_json::json!([stray]));
    assert_eq!(
        std::fs::read(env.data_dir.join(&stray)).unwrap(),
        b"not ours"
    );
    // The quarantine is not the mirror: never reported, never adopted.
    assert!(env.data_dir.join(&quarantined).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_of_an_upgraded_mirror_are_recorded_on_first_verify_and_checked_after() {
    let sim = sim(200).await;
    let env = Env::new();
    let items: Vec<SimItem> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(30), "items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    daemon.stop().await;
    // As if they had landed before digests existed.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        env.data_dir.join("state.sqlite").display()
    ))
    .await
    .unwrap();
    sqlx::query("DELETE FROM item_files")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (code, report) = verify_json(&env, &[]);
    assert_eq!(
        (code, &report["digests_recorded"]),
        (0, &serde_json::json!(3))
    );
    let (code, report) = verify_json(&env, &[]);
    assert_eq!(
        (code, &report["digests_recorded"]),
        (0, &serde_json::json!(0))
    );
    // Same size, other bytes: only a digest can tell.
    let path = env.data_dir.join(&items[0].expected[0].rel_path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let (code, report) = verify_json(&env, &[]);
    assert_eq!(
        (code, &report["changed"]),
        (4, &serde_json::json!(1)),
        "{report:#}"
    );
}

#[test]
fn verify_without_a_database_fails_to_run_with_exit_1_not_4() {
    let env = Env::new();
    let (code, _, err) = verify(&env, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no database"), "{err}");
}
