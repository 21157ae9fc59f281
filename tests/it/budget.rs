//! Request budgets: the daemon keeps to its configured data budget even with a backlog, so a
//! simulator enforcing the same limit never has to say 429; list calls are budgeted apart.

use std::time::Duration;

use jma_poller::sim::{ItemSpec, Sim, SimConfig};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_drained_within_the_data_budget_and_never_draws_a_429() {
    init_logs();
    // Upstream's rule, scaled down: 6 body requests per 3 s (the real one is 50 per 5 min).
    let window = Duration::from_secs(3);
    let sim = Sim::start(SimConfig {
        pooling_interval_ms: 100,
        data_limit: Some((6, window)),
        api_limit: None,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let env = Env::new();
    let items: Vec<_> = (0..20).map(|_| sim.add(ItemSpec::default())).collect();
    let mut settings = env.settings(&sim);
    settings.limits.data_requests = 6;
    settings.limits.data_window = window;
    settings.limits.data_burst = Some(2);
    settings.download.concurrency = 4;
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(30), "the backlog drains", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    daemon.stop().await;

    assert_eq!(sim.rate_limited(), 0, "never a 429 from the simulated WAF");
    let data: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.id.is_some())
        .map(|r| r.received)
        .collect();
    assert_eq!(data.len(), 20, "one request per item");
    for (i, t) in data.iter().enumerate() {
        let in_window = data[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < window)
            .count();
        assert!(
            in_window <= 6,
            "{in_window} body requests within {window:?}"
        );
    }
    // Paced, not bunched: after the burst of 2 the budget grants one request every
    // (window + margin) / 6 (710 ms). The times here are when the simulator saw each request, which adds the
    // scheduling delay of a loaded machine to each one, so single gaps wobble around 500 ms;
    // their median must sit at the pace, and no gap may come near what a burst would give
    // (requests back to back, a few ms apart).
    let mut gaps: Vec<Duration> = data[2..]
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    gaps.sort();
    assert!(
        gaps[gaps.len() / 2] >= Duration::from_millis(480),
        "median gap {:?} (all: {gaps:?})",
        gaps[gaps.len() / 2]
    );
    assert!(
        gaps[0] >= Duration::from_millis(250),
        "two requests {:?} apart (all: {gaps:?})",
        gaps[0]
    );
    // The list calls were not held back by the data budget: one per second (the poller's
    // floor, above the simulator's 100 ms interval) all along.
    let lists: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.is_list())
        .map(|r| r.received)
        .collect();
    let span = lists.last().unwrap().duration_since(lists[0]).as_secs_f64();
    assert!(span > 5.0, "the run lasted {span:.1} s");
    assert!(
        lists.len() as f64 >= span / 1.2,
        "{} list calls in {span:.1} s",
        lists.len()
    );
}
