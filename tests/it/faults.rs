//! Upstream faults: retried with backoff, never stored corrupt; permanent errors fail the item
//! with its reason; malformed responses never stop the daemon.

use jma_poller::state::prelude::*;
use std::collections::VecDeque;
use std::time::Duration;

use jma_poller::sim::{DataFault, ItemSpec, Kind, ListFault};
use jma_poller::state::Source;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_body_failures_are_retried_and_never_stored_corrupt() {
    let sim = sim(150).await;
    let env = Env::new();
    let big = ItemSpec {
        kind: Kind::Gzip,
        size: 400_000,
        ..ItemSpec::default()
    };
    let faults = [
        DataFault::Status(503),
        DataFault::Status(500),
        DataFault::RetryAfter(429, 1),
        DataFault::Truncate(20_000),
        DataFault::Corrupt,
        // Stalls longer than download.read_timeout (3 s in tests).
        DataFault::Stall(30_000, Duration::from_secs(60)),
    ];
    let mut faulty = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        let spec = if i == 4 {
            ItemSpec {
                kind: Kind::Concat { children: 3 },
                size: 50_000,
                ..ItemSpec::default()
            }
        } else {
            big.clone()
        };
        let item = sim.add(spec);
        sim.faults()
            .data_for
            .insert(item.id.clone(), VecDeque::from([fault.clone()]));
        faulty.push(item);
    }
    let clean: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();

    let mut settings = env.settings(&sim);
    settings.download.max_attempts = 4;
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(45),
        "every faulty item lands on retry",
        || async { all_landed(&env.data_dir, &faulty) && all_landed(&env.data_dir, &clean) },
    )
    .await;
    daemon.stop().await;

    assert_all_landed(&env.data_dir, &faulty);
    let f = fetches(&sim);
    for (item, fault) in faulty.iter().zip(&faults) {
        assert_eq!(
            f.get(&item.id),
            Some(&2),
            "{fault:?}: one failure, one success"
        );
    }
    for item in &clean {
        assert_eq!(f.get(&item.id), Some(&1));
    }
    assert!(
        tmp_leftovers(&env.data_dir).is_empty(),
        "no partial files left"
    );
    // Retry-After: 1 was honoured: the retry came at least a second after the 429.
    let throttled: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.id.as_ref() == Some(&faulty[2].id))
        .collect();
    assert_eq!(throttled[0].status, 429);
    let waited = throttled[1].received.duration_since(throttled[0].answered);
    assert!(
        waited >= Duration::from_secs(1),
        "retried {waited:?} after a 429 with Retry-After: 1"
    );
    let store = env.store().await;
    for (i, item) in faulty.iter().enumerate() {
        let (state, attempts, _, _) = store
            .item_state(Source::Jmafile, &item.id)
            .await
            .unwrap()
            .unwrap();
        // A 429 is throttling, not the item's failure: it does not use up an attempt.
        let expected = if i == 2 { 1 } else { 2 };
        assert_eq!(
            (state.as_str(), attempts),
            ("done", expected),
            "{:?}",
            faults[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_exhausted_retries_mark_the_item_failed_with_the_reason() {
    let sim = sim(150).await;
    let env = Env::new();
    let gone = sim.add(ItemSpec::default());
    sim.faults()
        .data_for
        .insert(gone.id.clone(), VecDeque::from([DataFault::Status(404)]));
    let rotten = sim.add(ItemSpec::default());
    sim.faults().data_for.insert(
        rotten.id.clone(),
        VecDeque::from(vec![DataFault::Corrupt; 3]),
    );
    let too_big = sim.add(ItemSpec {
        kind: Kind::Gzip,
        size: 300_000,
        ..ItemSpec::default()
    });
    let fine = sim.add(ItemSpec::default());

    let mut settings = env.settings(&sim);
    settings.download.max_attempts = 3;
    settings.download.max_size = bytesize::ByteSize::kib(200);
    let daemon = Daemon::start(settings);
    let store_path = env.data_dir.join("state.sqlite");
    wait_until(
        Duration::from_secs(30),
        "three items fail and one lands",
        || async {
            let Ok(store) = jma_poller::state::Store::open_read_only(&store_path).await else {
                return false;
            };
            let mut failed = 0;
            for i in [&gone, &rotten, &too_big] {
                if let Ok(Some((s, ..))) = store.item_state(Source::Jmafile, &i.id).await {
                    failed += (s == "failed") as usize;
                }
            }
            store.close().await;
            failed == 3 && landed(&env.data_dir, &fine)
        },
    )
    .await;
    daemon.stop().await;

    let store = env.store().await;
    let reason = |id: &str| {
        let store = store.clone();
        let id = id.to_owned();
        async move {
            store
                .item_state(Source::Jmafile, &id)
                .await
                .unwrap()
                .unwrap()
                .2
                .unwrap()
        }
    };
    assert!(
        reason(&gone.id).await.contains("404"),
        "{}",
        reason(&gone.id).await
    );
    let r = reason(&rotten.id).await;
    assert!(
        r.contains("gave up after 3 attempts") && r.contains("corrupt"),
        "{r}"
    );
    assert!(
        reason(&too_big.id).await.contains("max_size"),
        "{}",
        reason(&too_big.id).await
    );
    let f = fetches(&sim);
    assert_eq!(f.get(&gone.id), Some(&1), "a 404 is not retried");
    assert_eq!(
        f.get(&rotten.id),
        Some(&3),
        "corrupt data retried up to max_attempts"
    );
    assert_eq!(f.get(&too_big.id), Some(&1), "over max_size is not retried");
    for item in [&gone, &rotten, &too_big] {
        for file in &item.expected {
            assert!(
                !env.data_dir.join(&file.rel_path).exists(),
                "nothing stored for a failed item"
            );
        }
    }
    assert!(tmp_leftovers(&env.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_list_responses_and_entries_never_stop_the_daemon() {
    let sim = sim(150).await;
    let env = Env::new();
    sim.config().numbers_as_strings = true;
    sim.faults().list.extend([
        ListFault::Body("{not json".into()),
        ListFault::Body(r#"{"status":"ok"}"#.into()),
        ListFault::Status(503),
        ListFault::RetryAfter(429, 1),
    ]);
    let bad_serial = sim.add(ItemSpec {
        raw_entry: Some(
            serde_json::json!({"id": "bad-serial", "serial": "ten", "classification": "jmafile.x"}),
        ),
        ..ItemSpec::default()
    });
    let no_id = sim.add(ItemSpec {
        raw_entry: Some(serde_json::json!({"serial": "999999", "classification": "jmafile.x"})),
        ..ItemSpec::default()
    });
    let odd_compression = sim.add(ItemSpec {
        raw_entry: Some(serde_json::json!({
            "id": "bzip-item", "serial": 5, "classification": "jmafile.x",
            "headers": [{"length": 1, "filename": "a.bin.bz2"}],
            "receivedTime": jma_poller::sim::data::rfc3339(time::OffsetDateTime::now_utc()), "format": "grib2",
            "compression": "bzip2", "url": format!("{}/v1/bzip-item", sim.base_url())
        })),
        ..ItemSpec::default()
    });
    let good: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(
        Duration::from_secs(40),
        "good items land despite bad responses",
        || async { all_landed(&env.data_dir, &good) },
    )
    .await;
    // The entry without an id claimed serial 999999. It must not count as "known": after a
    // re-baseline (which pages back to the highest known serial) later items still land.
    sim.expire_tokens();
    let later: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    wait_until(
        Duration::from_secs(20),
        "items after a re-baseline land",
        || async { all_landed(&env.data_dir, &later) },
    )
    .await;
    daemon.stop().await;

    let store = env.store().await;
    let (state, _, error, _) = store
        .item_state(Source::Jmafile, "bad-serial")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("malformed list entry"));
    let (state, _, error, _) = store
        .item_state(Source::Jmafile, "bzip-item")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("unsupported compression"));
    let f = fetches(&sim);
    assert!(
        !f.contains_key("bzip-item")
            && !f.contains_key(&bad_serial.id)
            && !f.contains_key(&no_id.id)
    );
    let _ = odd_compression;
    // The cursor survived four failed polls and records no error once polling recovered.
    let report = store.status().await.unwrap();
    assert!(report.cursors[0].has_token);
    assert!(report.cursors[0].last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_backs_off_without_using_up_attempts() {
    let sim = sim(150).await;
    let env = Env::new();
    let item = sim.add(ItemSpec::default());
    sim.faults().data_for.insert(
        item.id.clone(),
        VecDeque::from(vec![DataFault::RetryAfter(429, 1); 3]),
    );
    let mut settings = env.settings(&sim);
    settings.download.max_attempts = 2;
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(40),
        "the throttled item lands",
        || async { landed(&env.data_dir, &item) },
    )
    .await;
    daemon.stop().await;
    assert_eq!(
        fetches(&sim).get(&item.id),
        Some(&4),
        "three 429s, then the body"
    );
    let (state, attempts, ..) = env
        .store()
        .await
        .item_state(Source::Jmafile, &item.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("done", 1),
        "429s never counted as attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_pauses_downloads_for_a_young_item_and_fails_an_old_one() {
    let sim = sim(150).await;
    let env = Env::new();
    let old = sim.add(ItemSpec {
        received: Some(time::OffsetDateTime::now_utc() - time::Duration::days(28)),
        ..ItemSpec::default()
    });
    let young = sim.add(ItemSpec::default());
    sim.faults()
        .data_for
        .insert(old.id.clone(), [DataFault::Status(403)].into());
    sim.faults()
        .data_for
        .insert(young.id.clone(), [DataFault::Status(403)].into());
    let mut settings = env.settings(&sim);
    settings.jmafile.backfill = Duration::from_secs(30 * 86_400);
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(20),
        "both were requested once",
        || async {
            let f = fetches(&sim);
            f.get(&old.id) == Some(&1) && f.get(&young.id) == Some(&1)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = sim.add(ItemSpec::default());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.stop().await;
    let store = env.store().await;
    let (s, _, error, _) = store
        .item_state(Source::Jmafile, &old.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s, "failed",
        "a 403 for an item near the end of the one-month window: aged out"
    );
    assert!(error.unwrap().contains("403"));
    let (s, attempts, error, _) = store
        .item_state(Source::Jmafile, &young.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.as_str(), attempts),
        ("pending", 0),
        "a 403 for a young item is the key's problem: paused, not failed"
    );
    assert!(error.unwrap().contains("403"));
    assert!(
        !fetches(&sim).contains_key(&later.id),
        "downloads are paused meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_queues_failed_items_again_while_the_daemon_runs() {
    let sim = sim(150).await;
    let env = Env::new();
    let gone = sim.add(ItemSpec::default());
    let refused = sim.add(ItemSpec {
        kind: Kind::Plain,
        filename: Some("../x".into()),
        ..ItemSpec::default()
    });
    sim.faults()
        .data_for
        .insert(gone.id.clone(), [DataFault::Status(404)].into());
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(20), "the item fails", || async {
        fetches(&sim).get(&gone.id) == Some(&1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = env.data_dir.display().to_string();
    let out = std::process::Command::new(bin())
        .args(["retry-failed", "--source", "jmafile"])
        .env("JMA_POLLER__STORAGE__DATA_DIR", &data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 failed item(s) queued again"), "{stdout}");
    assert!(stdout.contains("1 item(s) stay failed"), "{stdout}");
    wait_until(
        Duration::from_secs(30),
        "the re-queued item lands",
        || async { landed(&env.data_dir, &gone) },
    )
    .await;
    daemon.stop().await;
    let (s, ..) = env
        .store()
        .await
        .item_state(Source::Jmafile, &refused.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "failed");
}
