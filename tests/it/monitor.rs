//! Freshness as an operator meets it: the real daemon (binary) fed by the simulator, two
//! classifications arriving on a short cadence, then one of them stopping while the other goes
//! on. The stopped one must be flagged late in `/metrics`, `status`, `status --json` and the
//! status page (`GET /`, rendered by headless Chromium), the other not.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jma_poller::sim::{ItemSpec, SimItem};
use time::OffsetDateTime;

use crate::common::*;
use crate::ops::{free_port, get, sample};

/// Stops arriving during the test.
const STOPS: (&str, &str) = ("jmafile.rdr-nc5min", "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL");
/// Goes on arriving.
const GOES_ON: (&str, &str) = ("jmafile.fla-ajp", "FLA_GPV_Rjp_ANAL");

fn item(type_name: &str, received: OffsetDateTime) -> ItemSpec {
    ItemSpec {
        type_name: Some(type_name.into()),
        received: Some(received),
        ..ItemSpec::default()
    }
}

fn status(env: &Env, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("status")
        .args(args)
        .env_remove("RUST_LOG")
        .env("JMA_POLLER__STORAGE__DATA_DIR", &env.data_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn late(metrics: &str, classification: &str) -> Option<f64> {
    sample(
        metrics,
        "jma_poller_classification_late",
        &[("source", "jmafile"), ("classification", classification)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classification_that_stops_arriving_is_flagged_late_everywhere_and_the_other_is_not() {
    let sim = sim(300).await;
    let env = Env::new();
    // Three arrivals 3 s apart for each: a learned gap of 3 s (the catalog says 5 and 30
    // minutes), so late after 9 s without anything newer.
    let t0 = OffsetDateTime::now_utc();
    let mut first: Vec<SimItem> = Vec::new();
    for back in [9, 6, 3] {
        for (_, type_name) in [STOPS, GOES_ON] {
            first.push(sim.add(item(type_name, t0 - time::Duration::seconds(back))));
        }
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut envs = env.binary_env(&sim);
    envs.push((
        "JMA_POLLER__SERVER__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    let log = env.root.path().join("daemon.log");
    let mut daemon = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(30), "the first items land", || async {
        all_landed(&env.data_dir, &first)
    })
    .await;

    // One classification goes on every 3 s; the other has stopped. Each scrape comes right
    // after a fresh landing of the one that goes on.
    let started = Instant::now();
    let metrics = loop {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} never flagged late",
            STOPS.0
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let next = sim.add(item(GOES_ON.1, OffsetDateTime::now_utc()));
        wait_until(Duration::from_secs(20), "the next item lands", || async {
            landed(&env.data_dir, &next)
        })
        .await;
        let (code, metrics) = get(&format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        if late(&metrics, STOPS.0) == Some(1.0) {
            break metrics;
        }
    };
    assert_eq!(late(&metrics, GOES_ON.0), Some(0.0), "{metrics}");
    let labels = [("source", "jmafile"), ("classification", STOPS.0)];
    assert_eq!(
        sample(&metrics, "jma_poller_expected_interval_seconds", &labels),
        Some(3.0),
        "the gap is learned from arrivals: {metrics}"
    );
    let received = sample(
        &metrics,
        "jma_poller_last_received_timestamp_seconds",
        &labels,
    )
    .expect("last received gauge");
    let expected = (t0 - time::Duration::seconds(3)).unix_timestamp() as f64;
    assert!(
        (received - expected).abs() < 1.0,
        "{received} vs {expected}"
    );
    let landed_at = sample(
        &metrics,
        "jma_poller_last_landed_timestamp_seconds",
        &labels,
    )
    .expect("last landed gauge");
    assert!(landed_at >= received, "{landed_at} < {received}");
    assert!(sample(&metrics, "jma_poller_free_bytes", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(
        sample(&metrics, "jma_poller_min_free_bytes", &[]),
        Some(256.0 * 1024.0 * 1024.0)
    );

    // `status --json` and `status`, while the daemon runs.
    let json: serde_json::Value = serde_json::from_str(&status(&env, &["--json"])).unwrap();
    let entry = |class: &str| {
        json["freshness"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["classification"] == class)
            .unwrap_or_else(|| panic!("{class} missing: {json:#}"))
            .clone()
    };
    assert_eq!(entry(STOPS.0)["late"], true, "{json:#}");
    assert_eq!(entry(STOPS.0)["expected_interval_ms"], 3000);
    assert!(entry(STOPS.0)["age_ms"].as_i64().unwrap() > 9000);
    assert_eq!(entry(GOES_ON.0)["late"], false, "{json:#}");
    let text = status(&env, &[]);
    let line = |class: &str| {
        text.lines()
            .find(|l| l.contains(class))
            .unwrap_or_else(|| panic!("{class} missing: {text}"))
            .to_owned()
    };
    assert!(line(STOPS.0).trim_end().ends_with("LATE"), "{text}");
    assert!(line(GOES_ON.0).trim_end().ends_with("ok"), "{text}");

    // The status page, as served.
    let (code, html) = get(&format!("{base}/")).await;
    assert_eq!(code, 200);
    assert!(
        html.contains(&format!(
            "<tr class=\"late\" data-classification=\"{}\">",
            STOPS.0
        )),
        "{html}"
    );
    assert!(html.contains(&format!(
        "<tr class=\"ok\" data-classification=\"{}\">",
        GOES_ON.0
    )));
    assert!(html.contains("<meta http-equiv=\"refresh\""));
    assert!(html.contains("<svg id=\"landings\""));

    // And as a browser renders it.
    let rendered = chromium(&base, env.root.path());
    assert_eq!(daemon.stop("-TERM", STOP_LIMIT).await.code(), Some(0));
    let Some((dom, png)) = rendered else { return };
    for class in [STOPS.0, GOES_ON.0] {
        assert!(
            dom.contains(class),
            "{class} not on the rendered page: {dom}"
        );
    }
    assert!(
        dom.contains(&format!(
            "<tr class=\"late\" data-classification=\"{}\">",
            STOPS.0
        )),
        "{dom}"
    );
    assert!(dom.contains("<td class=\"flag\">late</td>"), "{dom}");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    if let Ok(dest) = std::env::var("JMA_STATUS_SCREENSHOT") {
        std::fs::write(dest, &png).unwrap();
    }
}

/// The page rendered by headless Chromium: its DOM (`--dump-dom`) and a screenshot. None when
/// Chromium is not installed (the reason is printed), except under CI, where that fails.
fn chromium(base: &str, dir: &Path) -> Option<(String, Vec<u8>)> {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    else {
        let why = "headless Chromium is not installed (Debian: apt-get install chromium)";
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: {why}"
        );
        eprintln!("skipping the browser part of the status page test: {why}");
        return None;
    };
    let run = |extra: &[String]| {
        let profile = tempfile::tempdir_in(dir).unwrap();
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend_from_slice(extra);
        args.push(format!("{base}/"));
        let out_path = dir.join("chromium.out");
        let mut child = Command::new(browser)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                panic!("{browser} did not finish within 90 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{browser} {args:?}: {status}");
        std::fs::read_to_string(out_path).unwrap()
    };
    let dom = run(&["--dump-dom".into()]);
    let png_path = dir.join("status-page.png");
    run(&[
        format!("--screenshot={}", png_path.display()),
        "--window-size=1000,900".into(),
        "--hide-scrollbars".into(),
    ]);
    Some((dom, std::fs::read(png_path).unwrap()))
}
