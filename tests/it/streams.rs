//! Several PuLL streams from `jmafile.types` (prefixes and full identifiers in any number), the
//! shared list-rate cap, cursor recovery whatever the 400 says, and the tolerance of list
//! entries the docs allow — against the simulator over real HTTP with a real SQLite file.

use jma_poller::state::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use jma_poller::api::models::parse_time;
use jma_poller::sim::{ItemSpec, Kind, Request, Sim, SimItem};
use jma_poller::state::Source;

use crate::common::*;

const FLA: &str = "FLA_GPV_Rjp_ANAL";
const WPR: &str = "WPR_SEQ_RS-all_Pww";
const DOSHA: &str = "MET_INF_Jdosha_Ggis1km_ANAL";
const SOIL: &str = "SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06";
const SIX: [&str; 6] = [
    FLA,
    DOSHA,
    "NOWC_GPV_Ggis1km_Plts10_FH0000-0100",
    "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL",
    SOIL,
    WPR,
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A plain item of a catalog identifier (BUFR/GRIB2 products arrive uncompressed).
fn of_type(type_name: &str) -> ItemSpec {
    ItemSpec {
        kind: Kind::Plain,
        type_name: Some(type_name.into()),
        ..ItemSpec::default()
    }
}

/// A query parameter of a logged request.
fn param(r: &Request, name: &str) -> Option<String> {
    url::form_urlencoded::parse(r.query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The jmafile list calls, by their `type` parameter ("" = none).
fn lists_by_type(sim: &Sim) -> BTreeMap<String, Vec<Request>> {
    let mut out: BTreeMap<String, Vec<Request>> = BTreeMap::new();
    for r in sim.requests() {
        if r.path == "/v2/jmafile" {
            out.entry(param(&r, "type").unwrap_or_default())
                .or_default()
                .push(r);
        }
    }
    out
}

fn assert_fetched_once(sim: &Sim, items: &[SimItem]) {
    let f = fetches(sim);
    for item in items {
        assert_eq!(
            f.get(&item.id),
            Some(&1),
            "{} (serial {}) fetched once",
            item.type_name,
            item.serial
        );
    }
}

async fn assert_never_listed(env: &Env, sim: &Sim, items: &[SimItem]) {
    let store = env.store().await;
    let f = fetches(sim);
    for item in items {
        assert!(
            store
                .item_state(Source::Jmafile, &item.id)
                .await
                .unwrap()
                .is_none(),
            "{} was recorded",
            item.type_name
        );
        assert!(!f.contains_key(&item.id), "{} was fetched", item.type_name);
    }
}

/// The lines of a JSON log whose `event` is `event`.
fn events(log: &std::path::Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["event"] == event || v["event"] == event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_are_two_streams_and_both_land() {
    let sim = sim(150).await;
    let env = Env::new();
    let radar: Vec<_> = (0..3).map(|_| sim.add(ItemSpec::default())).collect();
    let soil: Vec<_> = (0..3).map(|_| sim.add(of_type(SOIL))).collect();
    let other = vec![sim.add(of_type(FLA)), sim.add(of_type("OBS_AMDS_Rjp_N#"))];
    // What config/jma-poller.toml's own example sets: two prefixes.
    let mut settings = env.settings(&sim);
    settings.jmafile.types = vec!["RDR_GPV".into(), "SRF_GPV".into()];
    let daemon = Daemon::start(settings);
    let wanted: Vec<SimItem> = radar.iter().chain(&soil).cloned().collect();
    wait_until(Duration::from_secs(20), "both prefixes land", || async {
        all_landed(&env.data_dir, &wanted)
    })
    .await;
    let more = vec![sim.add(ItemSpec::default()), sim.add(of_type(SOIL))];
    wait_until(Duration::from_secs(20), "later items land", || async {
        all_landed(&env.data_dir, &more)
    })
    .await;
    daemon.stop().await;

    assert_fetched_once(&sim, &wanted);
    assert_fetched_once(&sim, &more);
    assert_never_listed(&env, &sim, &other).await;
    let by_type = lists_by_type(&sim);
    assert_eq!(
        by_type.keys().collect::<Vec<_>>(),
        vec!["RDR_GPV", "SRF_GPV"],
        "one stream per prefix, never both in one call (that would be an exact match)"
    );
    for calls in by_type.values() {
        assert!(
            calls
                .iter()
                .any(|r| r.cursor_kind.as_deref() == Some("polling")),
            "each stream follows its own nextPooling"
        );
    }
    // `status --json` lists the streams with their types.
    let out = std::process::Command::new(bin())
        .args(["status", "--json"])
        .env(
            "JMA_POLLER__STORAGE__DATA_DIR",
            env.data_dir.display().to_string(),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams: Vec<(String, serde_json::Value)> = report["cursors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["types"].clone()))
        .collect();
    assert_eq!(
        streams,
        vec![
            ("jmafile:RDR_GPV".into(), serde_json::json!(["RDR_GPV"])),
            ("jmafile:SRF_GPV".into(), serde_json::json!(["SRF_GPV"])),
        ]
    );
    let text = std::process::Command::new(bin())
        .args(["status"])
        .env(
            "JMA_POLLER__STORAGE__DATA_DIR",
            env.data_dir.display().to_string(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("jmafile streams: 2"), "{text}");
    assert!(text.contains("jmafile:SRF_GPV: types SRF_GPV"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_identifiers_are_two_exact_streams_of_three() {
    let sim = sim(150).await;
    let env = Env::new();
    let items: Vec<_> = SIX
        .iter()
        .map(|t| {
            if t.starts_with("RDR_") {
                sim.add(ItemSpec {
                    type_name: Some((*t).into()),
                    ..ItemSpec::default()
                })
            } else {
                sim.add(of_type(t))
            }
        })
        .collect();
    // Same prefix as one of the six, but another identifier: never wanted.
    let other = vec![sim.add(ItemSpec {
        type_name: Some("RDR_GPV_Ggis0p25km_Pri60lv_Aper5min_ANAL".into()),
        ..ItemSpec::default()
    })];
    let mut settings = env.settings(&sim);
    settings.jmafile.types = SIX.iter().map(|s| s.to_string()).collect();
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(20), "all six land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    daemon.stop().await;
    assert_fetched_once(&sim, &items);
    assert_never_listed(&env, &sim, &other).await;
    let groups: Vec<BTreeSet<String>> = lists_by_type(&sim)
        .keys()
        .map(|t| t.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert!(groups.iter().all(|g| g.len() == 3), "3 + 3: {groups:?}");
    let all: BTreeSet<String> = groups.into_iter().flatten().collect();
    assert_eq!(all, SIX.iter().map(|s| s.to_string()).collect());
    assert_eq!(sim.requests().iter().filter(|r| r.status == 400).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_prefixes_and_identifiers_and_a_lone_identifier_drops_its_over_matches() {
    let sim = sim(150).await;
    let env = Env::new();
    let wanted = vec![
        sim.add(ItemSpec::default()),
        sim.add(of_type(FLA)),
        sim.add(of_type(WPR)),
        // The JMBSC bundle: identifier `OBS_AMDSCC`, four corrections inside.
        sim.add(ItemSpec {
            kind: Kind::Concat { children: 4 },
            type_name: Some("OBS_AMDSCC".into()),
            ..ItemSpec::default()
        }),
        // Unknown to the catalog: listed as a prefix all the same.
        sim.add(ItemSpec {
            kind: Kind::Plain,
            classification: Some("jmafile.new-product".into()),
            type_name: Some("NEW_GPV_Ggis1km_ANAL".into()),
            ..ItemSpec::default()
        }),
    ];
    // `OBS_AMDSCC` alone is a prefix match upstream: it also brings single corrections.
    let over_match = vec![sim.add(of_type("OBS_AMDSCC_Rjp_N#"))];
    let mut settings = env.settings(&sim);
    settings.jmafile.types = vec![
        "RDR_GPV".into(),
        FLA.into(),
        WPR.into(),
        "NEW_GPV".into(),
        "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL".into(),
    ];
    let daemon = Daemon::start(settings.clone());
    wait_until(Duration::from_secs(20), "the mix lands", || async {
        all_landed(&env.data_dir, &wanted[..3]) && all_landed(&env.data_dir, &wanted[4..])
    })
    .await;
    daemon.stop().await;
    let planned: Vec<String> = lists_by_type(&sim).keys().cloned().collect();
    assert_eq!(
        planned,
        vec![
            format!("{FLA},{WPR}"),
            "NEW_GPV".to_string(),
            "RDR_GPV".to_string()
        ],
        "two prefixes and one group; the identifier under RDR_GPV needs no stream"
    );

    settings.jmafile.types = vec!["OBS_AMDSCC".into()];
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(20), "the bundle lands", || async {
        all_landed(&env.data_dir, &wanted[3..4])
    })
    .await;
    // The over-match was on the same pages as the bundle; give the poller one more round.
    let calls = lists_by_type(&sim).get("OBS_AMDSCC").map_or(0, Vec::len);
    wait_until(Duration::from_secs(10), "another poll", || async {
        lists_by_type(&sim).get("OBS_AMDSCC").map_or(0, Vec::len) > calls
    })
    .await;
    daemon.stop().await;
    assert_fetched_once(&sim, &wanted);
    assert_never_listed(&env, &sim, &over_match).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_added_while_stopped_is_backfilled_and_the_others_are_not_listed_again() {
    let sim = sim(150).await;
    let env = Env::new();
    let hours_ago =
        |h: f64| Some(time::OffsetDateTime::now_utc() - time::Duration::seconds_f64(h * 3600.0));
    // Phase 1: a prefix stream and a group of two.
    let first = vec![
        sim.add(ItemSpec::default()),
        sim.add(of_type(FLA)),
        sim.add(of_type(WPR)),
    ];
    let mut settings = env.settings(&sim);
    settings.jmafile.types = vec!["RDR_GPV".into(), FLA.into(), WPR.into()];
    let daemon = Daemon::start(settings.clone());
    wait_until(Duration::from_secs(20), "phase 1 lands", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;
    daemon.stop().await;
    let phase1 = sim.requests().len();

    // While stopped: more of each, and items of two new types, within and beyond the
    // backfill window (1 h).
    let meanwhile = vec![
        sim.add(ItemSpec::default()),
        sim.add(of_type(FLA)),
        sim.add(of_type(WPR)),
    ];
    let new_in_window = vec![
        sim.add(ItemSpec {
            received: hours_ago(0.5),
            ..of_type(DOSHA)
        }),
        sim.add(ItemSpec {
            received: hours_ago(0.5),
            ..of_type(SOIL)
        }),
    ];
    let new_too_old = vec![
        sim.add(ItemSpec {
            received: hours_ago(2.0),
            ..of_type(DOSHA)
        }),
        sim.add(ItemSpec {
            received: hours_ago(2.0),
            ..of_type(SOIL)
        }),
    ];
    // DOSHA joins the group (regrouped: a new stream), SRF_GPV is a new prefix stream.
    settings.jmafile.types = vec![
        "RDR_GPV".into(),
        FLA.into(),
        WPR.into(),
        DOSHA.into(),
        "SRF_GPV".into(),
    ];
    let started = time::OffsetDateTime::now_utc();
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(20), "phase 2 lands", || async {
        all_landed(&env.data_dir, &meanwhile) && all_landed(&env.data_dir, &new_in_window)
    })
    .await;
    daemon.stop().await;

    assert_fetched_once(&sim, &first);
    assert_fetched_once(&sim, &meanwhile);
    assert_fetched_once(&sim, &new_in_window);
    assert_never_listed(&env, &sim, &new_too_old).await;

    let phase2: Vec<Request> = sim.requests()[phase1..]
        .iter()
        .filter(|r| r.path == "/v2/jmafile")
        .cloned()
        .collect();
    let of = |t: &str| -> Vec<&Request> {
        phase2
            .iter()
            .filter(|r| param(r, "type").as_deref() == Some(t))
            .collect()
    };
    // The unchanged stream goes on with its cursor: nothing listed again.
    let radar = of("RDR_GPV");
    assert!(!radar.is_empty());
    assert!(
        radar
            .iter()
            .all(|r| r.cursor_kind.as_deref() == Some("polling")),
        "RDR_GPV was listed again without its cursor"
    );
    // The new prefix backfills exactly jmafile.backfill.
    let soil = of("SRF_GPV");
    assert_eq!(soil[0].cursor_kind, None);
    let since = parse_time(param(soil[0], "datetime").unwrap().trim_end_matches('~')).unwrap();
    let want = started - time::Duration::hours(1);
    assert!(
        (since - want).abs() < time::Duration::minutes(2),
        "SRF_GPV backfill from {since}, wanted about {want}"
    );
    // The regrouped stream starts from the newest serial the mirror holds for its known
    // identifiers (a day of slack for the undocumented timezone of `datetime`), not from the
    // month the API keeps, and pages back only to that serial.
    let group = of(&format!("{FLA},{DOSHA},{WPR}"));
    assert_eq!(group[0].cursor_kind, None);
    let since = parse_time(param(group[0], "datetime").unwrap().trim_end_matches('~')).unwrap();
    let oldest_known = first[1].received.min(first[2].received);
    assert!(
        since >= oldest_known - time::Duration::hours(24) - time::Duration::minutes(1),
        "group listed from {since}"
    );
    let pages = group
        .iter()
        .filter(|r| r.cursor_kind.as_deref() == Some("next"))
        .count();
    assert_eq!(pages, 0, "a handful of items fit one page");
    // The group's first call is the only one without a cursor in phase 2, with SRF_GPV's.
    let baselines = phase2.iter().filter(|r| r.cursor_kind.is_none()).count();
    assert_eq!(baselines, 2, "one baseline per new stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_streams_together_stay_below_two_list_calls_per_second() {
    let sim = sim(100).await;
    let env = Env::new();
    let prefixes = [
        "FLA_GPV", "MET_GPV", "MSG_GPV", "NOWC_GPV", "OBS_GPV", "RDR_GPV", "SRF_GPV", "WPR_SEQ",
    ];
    // A backlog on one stream: its pages go out "at once", paced with everything else.
    let backlog: Vec<_> = (0..250)
        .map(|i| {
            sim.add(ItemSpec {
                size: 200 + i,
                received: Some(
                    time::OffsetDateTime::now_utc() - time::Duration::seconds(600 - i as i64),
                ),
                ..ItemSpec::default()
            })
        })
        .collect();
    let mut settings = env.settings(&sim);
    settings.jmafile.types = prefixes.iter().map(|s| s.to_string()).collect();
    let daemon = Daemon::start(settings);
    wait_until(
        Duration::from_secs(120),
        "60 list calls and the backlog",
        || async {
            sim.requests().iter().filter(|r| r.is_list()).count() >= 60
                && all_landed(&env.data_dir, &backlog)
        },
    )
    .await;
    daemon.stop().await;

    let lists: Vec<Request> = sim.requests().into_iter().filter(|r| r.is_list()).collect();
    let times: Vec<Instant> = lists.iter().map(|r| r.received).collect();
    // In any one second, at most two list calls reach the server.
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 2,
            "{in_window} list calls within 1 s from call {i}"
        );
    }
    let span = times.last().unwrap().duration_since(times[0]).as_secs_f64();
    let rate = (times.len() - 1) as f64 / span;
    eprintln!(
        "{} list calls in {span:.1} s across 8 streams: {rate:.2}/s, {:.0} per minute",
        times.len(),
        rate * 60.0
    );
    assert!(rate < 2.0, "{rate:.2} list calls per second");
    // Every stream got its turns.
    let by_type = lists_by_type(&sim);
    assert_eq!(by_type.len(), 8);
    for (t, calls) in &by_type {
        assert!(calls.len() >= 3, "{t}: {} calls", calls.len());
    }
    assert!(
        by_type["RDR_GPV"]
            .iter()
            .any(|r| r.cursor_kind.as_deref() == Some("next")),
        "the backlog was paged"
    );
    assert_fetched_once(&sim, &backlog);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_refused_with_an_unknown_400_text_rebaselines_and_every_item_lands_once() {
    let sim = sim(150).await;
    sim.config().cursor_refusal = Some("Bad request.".into());
    let env = Env::new();
    let mut items: Vec<_> = (0..5).map(|_| sim.add(ItemSpec::default())).collect();
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &env.binary_env(&sim), &log);
    wait_until(Duration::from_secs(20), "first items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    // The cursor is refused with a message nobody documented; items keep arriving, more than a
    // page, so the re-baseline pages back to the last known serial.
    sim.expire_tokens();
    for i in 0..130 {
        items.push(sim.add(ItemSpec {
            size: 300 + i,
            ..ItemSpec::default()
        }));
    }
    wait_until(
        Duration::from_secs(60),
        "items after the refusal land",
        || async { all_landed(&env.data_dir, &items) },
    )
    .await;
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));

    let refused: Vec<Request> = sim
        .requests()
        .into_iter()
        .filter(|r| r.is_list() && r.status == 400)
        .collect();
    assert_eq!(refused.len(), 2, "the cursor was tried twice, then dropped");
    assert!(refused.iter().all(|r| r.cursor_kind.is_some()));
    let warned = events(&log, "cursor_refused");
    assert_eq!(warned.len(), 1, "one WARN line");
    assert_eq!(warned[0]["level"], "WARN");
    assert_fetched_once(&sim, &items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_without_a_cursor_names_jmafile_types_fails_readyz_and_never_loops() {
    let sim = sim(150).await;
    let env = Env::new();
    let radar = vec![sim.add(ItemSpec::default())];
    let soil = vec![sim.add(of_type(SOIL))];
    let port = free_port();
    let log = env.root.path().join("daemon.log");
    let mut envs = env.binary_env(&sim);
    // And an entry the catalog does not know: a warning at start, a stream all the same.
    envs.push((
        "JMA_POLLER__JMAFILE__TYPES".into(),
        "RDR_GPV,SRF_GPV,RDR_TYPO_X".into(),
    ));
    envs.push((
        "JMA_POLLER__SERVER__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(20), "both streams work", || async {
        all_landed(&env.data_dir, &radar) && all_landed(&env.data_dir, &soil)
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), "ready", || async {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;

    // From now on the service refuses `type=SRF_GPV`, cursor or not.
    sim.config().refused_types = vec!["SRF_GPV".into()];
    let before = sim.requests().len();
    wait_until(Duration::from_secs(20), "readyz fails", || async {
        get(&format!("{base}/readyz")).await.0 == 503
    })
    .await;
    let (_, body) = get(&format!("{base}/readyz")).await;
    assert!(body.contains("jmafile.types"), "{body}");
    assert!(body.contains("SRF_GPV"), "{body}");
    // The other stream runs on: more radar lands meanwhile.
    let later = vec![sim.add(ItemSpec::default())];
    wait_until(Duration::from_secs(20), "radar goes on", || async {
        all_landed(&env.data_dir, &later)
    })
    .await;
    // Long enough for a loop to show: RDR_GPV polls many times meanwhile.
    let radar_polls = |sim: &Sim| {
        sim.requests()[before..]
            .iter()
            .filter(|r| param(r, "type").as_deref() == Some("RDR_GPV"))
            .count()
    };
    wait_until(Duration::from_secs(30), "10 more radar polls", || async {
        radar_polls(&sim) >= 10
    })
    .await;
    let out = std::process::Command::new(bin())
        .args(["healthcheck"])
        .env("JMA_POLLER__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "healthcheck fails too");
    assert_eq!(child.stop("-TERM", STOP_LIMIT).await.code(), Some(0));

    let soil_calls: Vec<Request> = sim.requests()[before..]
        .iter()
        .filter(|r| param(r, "type").as_deref() == Some("SRF_GPV"))
        .cloned()
        .collect();
    let kinds: Vec<Option<&str>> = soil_calls
        .iter()
        .map(|r| r.cursor_kind.as_deref())
        .collect();
    assert_eq!(
        kinds,
        vec![Some("polling"), Some("polling"), None],
        "the cursor twice, one re-baseline, then backoff (no loop)"
    );
    assert!(soil_calls.iter().all(|r| r.status == 400));
    let errors = events(&log, "types_refused");
    assert_eq!(errors.len(), 1, "one ERROR line");
    assert_eq!(errors[0]["level"], "ERROR");
    assert!(
        errors[0].to_string().contains("jmafile.types"),
        "{}",
        errors[0]
    );
    assert_eq!(events(&log, "cursor_refused").len(), 1);
    let unknown = events(&log, "type_unknown");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0]["level"], "WARN");
    assert_eq!(unknown[0]["entry"], "RDR_TYPO_X");
    let planned = events(&log, "streams");
    assert_eq!(planned[0]["count"], 3, "{planned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_without_received_time_or_format_land_and_datetime_stays_within_the_month() {
    let sim = sim(150).await;
    let env = Env::new();
    let items = vec![
        sim.add(ItemSpec {
            omit_fields: vec!["receivedTime".into(), "format".into()],
            ..ItemSpec::default()
        }),
        sim.add(ItemSpec {
            kind: Kind::Concat { children: 3 },
            omit_fields: vec!["format".into()],
            ..ItemSpec::default()
        }),
    ];
    let mut settings = env.settings(&sim);
    // The longest backfill allowed reaches past the month the API keeps.
    settings.jmafile.backfill = Duration::from_secs(31 * 86_400);
    let started = time::OffsetDateTime::now_utc();
    let daemon = Daemon::start(settings);
    wait_until(Duration::from_secs(20), "both land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    daemon.stop().await;
    assert_fetched_once(&sim, &items);
    let store = env.store().await;
    for item in &items {
        let (state, _, error, _) = store
            .item_state(Source::Jmafile, &item.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state, "done", "{error:?}");
    }
    let first = sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/v2/jmafile")
        .unwrap();
    let since = parse_time(param(&first, "datetime").unwrap().trim_end_matches('~')).unwrap();
    assert!(
        since >= started - time::Duration::days(30) - time::Duration::minutes(1),
        "datetime from {since}: older than the month the API keeps"
    );
}
