//! Hostile input: names that try to escape the data dir, and items whose url points at a host
//! that must never see the key.

use jma_poller::state::prelude::*;
use std::time::Duration;

use jma_poller::sim::{ItemSpec, Kind};
use jma_poller::state::Source;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_untrusted_hosts_are_refused_and_the_daemon_keeps_running() {
    let sim = sim(150).await;
    let env = Env::new();
    let hostile_names = [
        "../../../escaped.bin",
        "/tmp/absolute.bin",
        "sub/dir.bin",
        "back\\slash.bin",
        "nul\0byte.bin",
        "..",
    ];
    let mut refused = Vec::new();
    for name in hostile_names {
        refused.push(sim.add(ItemSpec {
            kind: Kind::Plain,
            filename: Some(name.into()),
            ..ItemSpec::default()
        }));
    }
    refused.push(sim.add(ItemSpec {
        kind: Kind::Concat { children: 2 },
        child_names: Some(vec!["ok.dbf".into(), "../../child-escape.shp".into()]),
        ..ItemSpec::default()
    }));
    refused.push(sim.add(ItemSpec {
        classification: Some("../../jmafile.evil".into()),
        ..ItemSpec::default()
    }));
    // Same simulator, but named "localhost": a different host from the trusted 127.0.0.1:port.
    let untrusted = sim.add(ItemSpec {
        url_origin: Some(format!("http://localhost:{}", sim.addr().port())),
        ..ItemSpec::default()
    });
    let good_before: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();

    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(20), "good items land", || async {
        all_landed(&env.data_dir, &good_before)
    })
    .await;
    // Still running: later items land too.
    let good_after: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    wait_until(
        Duration::from_secs(20),
        "items after the hostile ones land",
        || async { all_landed(&env.data_dir, &good_after) },
    )
    .await;
    daemon.stop().await;

    let store = env.store().await;
    for item in &refused {
        let (state, attempts, error, _) = store
            .item_state(Source::Jmafile, &item.id)
            .await
            .unwrap()
            .unwrap();
        let error = error.unwrap_or_default();
        assert_eq!(state, "failed", "{:?}", item.filename());
        assert_eq!(attempts, 0, "refused before any request");
        assert!(
            error.contains("unsafe name"),
            "{:?}: {error}",
            item.filename()
        );
    }
    let (state, _, error, _) = store
        .item_state(Source::Jmafile, &untrusted.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("untrusted host"));

    // Nothing was written outside the data dir, and nothing hostile inside it.
    let outside: Vec<_> = std::fs::read_dir(env.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("data")]);
    assert!(!std::path::Path::new("/tmp/absolute.bin").exists());
    let files = files_under(&env.data_dir);
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("jmafile/jmafile.rdr-nc5min/")),
        "{files:?}"
    );
    assert_eq!(files.len(), 6);

    // No request ever went out for a refused item: in particular the untrusted host never
    // saw one, with or without the key.
    let f = fetches(&sim);
    for item in refused.iter().chain([&untrusted]) {
        assert!(
            !f.contains_key(&item.id),
            "{:?} was requested",
            item.filename()
        );
    }
    assert!(
        sim.requests()
            .iter()
            .all(|r| !r.host.starts_with("localhost"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_long_names_are_stored_side_by_side_and_never_stall_downloads() {
    let sim = sim(150).await;
    let env = Env::new();
    let long = format!("{}.bin", "L".repeat(250));
    // One product, so both land in the same folder under the same name.
    let soil = Some("SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06".to_string());
    let a = sim.add(ItemSpec {
        kind: Kind::Plain,
        type_name: soil.clone(),
        filename: Some(long.clone()),
        ..ItemSpec::default()
    });
    let b = sim.add(ItemSpec {
        kind: Kind::Plain,
        type_name: soil,
        filename: Some(long.clone()),
        ..ItemSpec::default()
    });
    let after: Vec<_> = (0..4).map(|_| sim.add(ItemSpec::default())).collect();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(20), "later items land", || async {
        all_landed(&env.data_dir, &after)
    })
    .await;
    let store = env.store().await;
    wait_until(
        Duration::from_secs(10),
        "both long-named items are done",
        || async {
            let sa = store
                .item_state(Source::Jmafile, &a.id)
                .await
                .unwrap()
                .unwrap();
            let sb = store
                .item_state(Source::Jmafile, &b.id)
                .await
                .unwrap()
                .unwrap();
            sa.0 == "done" && sb.0 == "done"
        },
    )
    .await;
    daemon.stop().await;
    assert!(landed(&env.data_dir, &a), "the first keeps its name");
    let (_, _, _, path) = store
        .item_state(Source::Jmafile, &b.id)
        .await
        .unwrap()
        .unwrap();
    let path = path.unwrap();
    let leaf = path.rsplit('/').next().unwrap();
    assert!(leaf.len() <= 255 && leaf.contains(".~"), "{leaf}");
    assert_eq!(
        std::fs::read(env.data_dir.join(&path)).unwrap(),
        b.expected[0].bytes.as_ref()
    );
}
