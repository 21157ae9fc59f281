//! JmaFile PuLL: items land once with the right bytes, the interval is honoured, backlogs and
//! expired cursors lose nothing.

use jma_poller::state::prelude::*;
use std::time::{Duration, Instant};

use jma_poller::sim::{BacklogOrder, ItemSpec, Kind};

use crate::common::*;

fn mixed_spec(i: usize) -> ItemSpec {
    let kind = match i % 5 {
        0 => Kind::Gzip,
        1 => Kind::Plain,
        2 => Kind::Zip,
        3 => Kind::Concat { children: 3 },
        _ => Kind::ConcatPlain { children: 2 },
    };
    ItemSpec {
        kind,
        size: 1000 + i * 997,
        ..ItemSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_appearing_over_time_land_once_with_the_right_bytes_and_names() {
    let sim = sim(200).await;
    let env = Env::new();
    let mut items: Vec<_> = (0..5).map(|i| sim.add(mixed_spec(i))).collect();
    let daemon = Daemon::start(env.settings(&sim));
    for i in 5..25 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        items.push(sim.add(mixed_spec(i)));
    }
    wait_until(Duration::from_secs(30), "all items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    daemon.stop().await;

    assert_all_landed(&env.data_dir, &items);
    let f = fetches(&sim);
    for item in &items {
        assert_eq!(
            f.get(&item.id),
            Some(&1),
            "serial {} fetched once",
            item.serial
        );
    }
    // Nothing on disk but the expected files.
    let mut expected: Vec<String> = items
        .iter()
        .flat_map(|i| i.expected.iter().map(|f| f.rel_path.clone()))
        .collect();
    expected.sort();
    assert_eq!(files_under(&env.data_dir), expected);
    assert!(tmp_leftovers(&env.data_dir).is_empty());
    let report = env.store().await.status().await.unwrap();
    let done: i64 = report
        .counts
        .iter()
        .filter(|c| c.state == "done")
        .map(|c| c.items)
        .sum();
    assert_eq!(done, items.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_are_never_closer_than_next_pooling_interval_even_across_restarts() {
    let sim = sim(400).await;
    let env = Env::new();
    sim.add(ItemSpec::default());
    // Each phase lasts until it has seen its polls (counting, not sleeping a fixed time, so
    // a slow machine only makes it longer).
    let pulls_seen = || sim.requests().iter().filter(|r| r.is_pull()).count();
    let more_polls = async |n: usize, what: &str| {
        let before = pulls_seen();
        wait_until(Duration::from_secs(30), what, || async {
            pulls_seen() >= before + n
        })
        .await;
    };
    let daemon = Daemon::start(env.settings(&sim));
    more_polls(3, "3 polls at 400 ms").await;
    sim.config().pooling_interval_ms = 900;
    let changed = Instant::now();
    more_polls(4, "4 polls after the change").await;
    daemon.stop().await;
    // Restart at once: the stored interval still applies to the first poll.
    let daemon = Daemon::start(env.settings(&sim));
    more_polls(2, "2 polls after the restart").await;
    daemon.stop().await;

    let pulls: Vec<_> = sim.requests().into_iter().filter(|r| r.is_pull()).collect();
    assert!(pulls.len() >= 8, "enough polls to measure: {}", pulls.len());
    let mut after_change = 0;
    for w in pulls.windows(2) {
        let gap = w[1].received.duration_since(w[0].answered);
        // The response that first carried 900 ms was answered after `changed`.
        let interval = if w[0].received > changed { 900 } else { 400 };
        assert!(
            gap >= Duration::from_millis(interval),
            "poll sent {gap:?} after the previous response; interval was {interval} ms"
        );
        if interval == 900 {
            after_change += 1;
        }
    }
    assert!(
        after_change >= 3,
        "polls measured after the change: {after_change}"
    );
}

async fn backlog_while_stopped(order: BacklogOrder) {
    let sim = sim(150).await;
    sim.config().backlog_order = order;
    let env = Env::new();
    let first = vec![sim.add(ItemSpec::default())];
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(15), "first item lands", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    daemon.stop().await;

    let backlog: Vec<_> = (0..250)
        .map(|i| {
            sim.add(ItemSpec {
                kind: Kind::Gzip,
                size: 300 + i,
                ..ItemSpec::default()
            })
        })
        .collect();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(
        Duration::from_secs(60),
        "the whole backlog lands",
        || async { all_landed(&env.data_dir, &backlog) },
    )
    .await;
    daemon.stop().await;
    assert_all_landed(&env.data_dir, &backlog);
    let f = fetches(&sim);
    assert!(
        backlog
            .iter()
            .chain(&first)
            .all(|i| f.get(&i.id) == Some(&1)),
        "each id fetched exactly once"
    );
    let report = env.store().await.status().await.unwrap();
    let done: i64 = report
        .counts
        .iter()
        .filter(|c| c.state == "done")
        .map(|c| c.items)
        .sum();
    assert_eq!(done, 251);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_of_250_while_stopped_lands_after_restart_newest_first() {
    backlog_while_stopped(BacklogOrder::NewestFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_of_250_while_stopped_lands_after_restart_oldest_first() {
    backlog_while_stopped(BacklogOrder::OldestFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursor_rebaselines_with_no_gap_and_no_duplicates() {
    let sim = sim(150).await;
    let env = Env::new();
    let mut items: Vec<_> = (0..10).map(|i| sim.add(mixed_spec(i))).collect();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(15), "first items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    // The token the daemon holds is now refused; items keep arriving meanwhile, more than
    // one page's worth, so the re-baseline has to page back to the last known serial.
    sim.expire_tokens();
    for i in 10..140 {
        items.push(sim.add(ItemSpec {
            size: 200 + i,
            ..ItemSpec::default()
        }));
    }
    wait_until(
        Duration::from_secs(40),
        "items after the expiry land",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    daemon.stop().await;

    let refused = sim
        .requests()
        .iter()
        .filter(|r| r.is_list() && r.status == 400)
        .count();
    assert!(refused >= 1, "the stale token was actually refused");
    let f = fetches(&sim);
    for item in &items {
        assert_eq!(
            f.get(&item.id),
            Some(&1),
            "serial {} fetched exactly once",
            item.serial
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pull_page_without_next_token_is_listed_again_without_a_gap() {
    let sim = sim(150).await;
    sim.config().backlog_order = BacklogOrder::NewestWithoutToken;
    let env = Env::new();
    let first = vec![sim.add(ItemSpec::default())];
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(Duration::from_secs(15), "first item", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    daemon.stop().await;
    // 250 while stopped; the PuLL answer holds the newest 100 and no way to page back.
    let backlog: Vec<_> = (0..250)
        .map(|i| {
            sim.add(ItemSpec {
                size: 300 + i,
                ..ItemSpec::default()
            })
        })
        .collect();
    let daemon = Daemon::start(env.settings(&sim));
    wait_until(
        Duration::from_secs(60),
        "the whole backlog lands",
        || async { all_landed(&env.data_dir, &backlog) },
    )
    .await;
    daemon.stop().await;
    let f = fetches(&sim);
    assert!(
        backlog.iter().all(|i| f.get(&i.id) == Some(&1)),
        "each id fetched exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_serial_upstream_never_hides_later_items() {
    let sim = sim(150).await;
    let env = Env::new();
    let mut items = vec![sim.add(ItemSpec {
        announced_serial: Some(u64::MAX),
        ..ItemSpec::default()
    })];
    let daemon = Daemon::start(env.settings(&sim));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        items.push(sim.add(ItemSpec::default()));
    }
    wait_until(
        Duration::from_secs(15),
        "items after the outlier land",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    // And after a re-baseline, which pages back to the watermark.
    sim.expire_tokens();
    let later = vec![sim.add(ItemSpec::default())];
    wait_until(
        Duration::from_secs(15),
        "items after a re-baseline land",
        || async { all_landed(&env.data_dir, &later) },
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_jmafile_types_lists_the_new_set_and_loses_nothing_meanwhile() {
    let sim = sim(150).await;
    let env = Env::new();
    let radar = "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL";
    let soil = "SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06";
    // A typo matches nothing; fixing it must take effect.
    let mut settings = env.settings(&sim);
    settings.jmafile.types = vec!["RDR_GPV_TYPO".into()];
    let daemon = Daemon::start(settings.clone());
    let first = vec![sim.add(ItemSpec {
        type_name: Some(radar.into()),
        ..ItemSpec::default()
    })];
    tokio::time::sleep(Duration::from_millis(800)).await;
    daemon.stop().await;
    assert!(!all_landed(&env.data_dir, &first));
    settings.jmafile.types = vec!["RDR_GPV".into()];
    let daemon = Daemon::start(settings.clone());
    wait_until(
        Duration::from_secs(15),
        "the corrected type lists",
        || async { all_landed(&env.data_dir, &first) },
    )
    .await;
    daemon.stop().await;

    // Down for a while: a radar item arrived two hours ago (beyond the 1 h backfill); then a
    // second type is added. Neither the old type's item nor the new type's are lost.
    let two_hours_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    let missed = vec![
        sim.add(ItemSpec {
            type_name: Some(radar.into()),
            received: Some(two_hours_ago),
            ..ItemSpec::default()
        }),
        sim.add(ItemSpec {
            kind: Kind::Plain,
            type_name: Some(soil.into()),
            ..ItemSpec::default()
        }),
    ];
    settings.jmafile.types = vec![radar.into(), soil.into()];
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(15), "both land", || async {
        all_landed(&env.data_dir, &missed)
    })
    .await;
    daemon.stop().await;
    let f = fetches(&sim);
    assert!(
        first
            .iter()
            .chain(&missed)
            .all(|i| f.get(&i.id) == Some(&1))
    );
}
