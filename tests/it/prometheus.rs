//! The monitoring kit in `deploy/`, checked by the programs that will run it: `promtool` checks
//! the alert rules and runs their unit tests (`deploy/prometheus/tests/`), and a real Prometheus
//! (Debian's `prometheus` binary, on loopback) scrapes a real daemon fed by the simulator while
//! every Grafana panel query and every alert expression is run against it.
//!
//! Without the tools the tests say why and skip; under CI (`CI` set) that is a failure.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jma_poller::sim::{DataFault, ItemSpec};
use serde_json::Value;

use crate::common::*;
use crate::ops::{free_port, get, sample};

const RULES: &str = "deploy/prometheus/jma-poller.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests";
const DASHBOARD: &str = "deploy/grafana/jma-poller-dashboard.json";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// True when running under CI, where a missing tool fails the test instead of skipping it.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `name` from PATH. Missing: None after saying why the test skips, or a failure under CI.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why =
            format!("{name} is not on PATH (Debian package `prometheus`; .ci/run installs it)");
        assert!(!under_ci(), "{why}; under CI this test must run");
        eprintln!("skipped: {why}");
    }
    found
}

/// Runs `promtool args…` from the repository root; panics with its output unless it succeeds.
fn promtool(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alert names in the rules file, in order (lines `- alert: Name`).
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(repo(RULES))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// The unit-test files, sorted.
fn rule_test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo(RULE_TESTS))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .map(|n| format!("{RULE_TESTS}/{n}"))
        .collect();
    files.sort();
    files
}

/// Per alert name, whether the unit tests expect it to fire (`exp_alerts:` with entries) and to
/// stay quiet (`exp_alerts: []`) somewhere: (fires, quiet).
fn alert_cases(files: &[String]) -> BTreeMap<String, (usize, usize)> {
    let mut cases = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        while let Some(line) = lines.next() {
            let Some(name) = line.strip_prefix("alertname:") else {
                continue;
            };
            let entry = cases.entry(name.trim().to_owned()).or_insert((0, 0));
            match lines.next() {
                Some("exp_alerts: []") => entry.1 += 1,
                Some("exp_alerts:") => entry.0 += 1,
                other => panic!("{file}: alertname {name} followed by {other:?}"),
            }
        }
    }
    cases
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests_with_a_firing_and_a_quiet_case_each() {
    let Some(promtool_bin) = tool("promtool") else {
        return;
    };
    let names = alert_names();
    let checked = promtool(&promtool_bin, &["check", "rules", RULES]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool saw a different number of rules than the {} alerts in {RULES}:\n{checked}",
        names.len()
    );

    let files = rule_test_files();
    assert!(!files.is_empty(), "no unit tests in {RULE_TESTS}");
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let tested = promtool(&promtool_bin, &args);
    assert!(
        !tested.contains("FAILED") && tested.matches("SUCCESS").count() == files.len(),
        "{tested}"
    );

    let cases = alert_cases(&files);
    for name in &names {
        let (fires, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(
            fires > 0 && quiet > 0,
            "{name}: unit tests must show it firing ({fires} cases) and staying quiet ({quiet})"
        );
    }
    for name in cases.keys() {
        assert!(
            names.contains(name),
            "unit tests name an unknown alert {name}"
        );
    }
    eprintln!(
        "promtool: {} rules; {} files, {} alert checks ({} firing, {} quiet), all passed",
        names.len(),
        files.len(),
        cases.values().map(|(f, q)| f + q).sum::<usize>(),
        cases.values().map(|(f, _)| f).sum::<usize>(),
        cases.values().map(|(_, q)| q).sum::<usize>(),
    );

    // The example scrape configuration is valid too (its rule_files path is the installed one).
    promtool(
        &promtool_bin,
        &[
            "check",
            "config",
            "--syntax-only",
            "deploy/prometheus/prometheus.example.yml",
        ],
    );
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap())
        .expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// (panel title, query) for every target of every panel.
fn panel_queries(dash: &Value) -> Vec<(String, String)> {
    all_panels(dash)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

#[test]
fn the_dashboard_is_provisionable_and_picks_its_datasource_from_a_variable() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "jma-poller");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(
        dash.get("__inputs").is_none(),
        "provisioning does not fill __inputs"
    );
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a datasource variable of type prometheus"
    );
    let mut ids = std::collections::HashSet::new();
    let panels = all_panels(&dash);
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id repeated"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
    for what in [
        "jma_poller_last_landed_timestamp_seconds",
        "jma_poller_items_downloaded_total",
        "jma_poller_queue_depth",
        "jma_poller_items_failed_total",
        "jma_poller_budget_remaining",
        "jma_poller_end_to_end_seconds_bucket",
        "jma_poller_http_429_total",
        "jma_poller_downloads_paused",
        "jma_poller_free_bytes",
    ] {
        assert!(
            panel_queries(&dash).iter().any(|(_, q)| q.contains(what)),
            "no panel shows {what}"
        );
    }
    let provider = std::fs::read_to_string(repo(
        "deploy/grafana/provisioning/dashboards/jma-poller.yml",
    ))
    .unwrap();
    assert!(provider.contains("type: file") && provider.contains("path:"));
}

/// A query as Grafana would send it: the dashboard's variables replaced by concrete values.
fn concrete(query: &str, instance: &str) -> String {
    query
        .replace("$__rate_interval", "2m")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("$job", "jma-poller")
        .replace("$instance", instance)
}

/// A Grafana variable query `label_values(selector, label)` as a PromQL query.
fn variable_query(q: &str) -> Option<String> {
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({})", label.trim(), selector.trim()))
}

/// A Prometheus started by a test, killed when dropped.
struct Prometheus {
    _proc: Proc,
    base: String,
}

impl Prometheus {
    /// Starts `bin` on 127.0.0.1 with its config, storage and log in `dir`, scraping `target` every second under
    /// job "jma-poller" and evaluating the repository's rules every second.
    async fn start(bin: &Path, dir: &Path, target: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: jma-poller\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = repo(RULES).display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus starts");
        let proc = Proc::new(child, &log);
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/-/ready");
        let start = std::time::Instant::now();
        while !reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus not ready after 30 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus { _proc: proc, base }
    }

    /// HTTP status and JSON body of an instant query.
    async fn query(&self, promql: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("query Prometheus");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The result series of a query that must succeed (empty if it has none).
    async fn series(&self, promql: &str) -> Vec<Value> {
        let (status, body) = self.query(promql).await;
        assert_eq!(status, 200, "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn rules(&self) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/api/v1/rules", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_runs_on_a_real_prometheus_scraping_the_daemon()
{
    let Some(prometheus_bin) = tool("prometheus") else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = sim(200).await;
    let env = Env::new();
    // Two classifications with a catalog cadence (5 and 10 min), a few items each.
    let mut items = Vec::new();
    for type_name in [
        "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL",
        "SRF_GPV_Ggis1km_Psw_Aper10min_ANAL",
    ] {
        for _ in 0..3 {
            items.push(sim.add(ItemSpec {
                type_name: Some(type_name.into()),
                ..ItemSpec::default()
            }));
        }
    }
    // One item refused for good (a failure), one answered 429 once (then it lands).
    let refused = sim.add(ItemSpec::default());
    let throttled = sim.add(ItemSpec::default());
    {
        let mut faults = sim.faults();
        faults
            .data_for
            .insert(refused.id.clone(), VecDeque::from([DataFault::Status(404)]));
        faults.data_for.insert(
            throttled.id.clone(),
            VecDeque::from([DataFault::RetryAfter(429, 1)]),
        );
    }
    items.push(throttled);

    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let mut settings = env.settings(&sim);
    settings.server.listen = Some(target.parse().unwrap());
    // A finite data budget, so its gauge is exported; large enough never to hold anything up.
    settings.limits.data_requests = 1000;
    settings.hooks.on_file = vec!["true".into()];
    let daemon = Daemon::start(settings);

    let prom_dir = env.root.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(&prometheus_bin, &prom_dir, &target).await;

    wait_until(Duration::from_secs(30), "items land", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    let metrics_url = format!("http://{target}/metrics");
    wait_until(
        Duration::from_secs(30),
        "the failure and the 429 are counted",
        || async {
            let (_, m) = get(&metrics_url).await;
            sample(
                &m,
                "jma_poller_items_failed_total",
                &[("source", "jmafile")],
            )
            .is_some()
                && sample(&m, "jma_poller_http_429_total", &[("budget", "data")]).is_some()
        },
    )
    .await;
    // Scraped a few times (after the events above).
    wait_until(
        Duration::from_secs(60),
        "Prometheus scraped the daemon 5 times",
        || async {
            prom.series(
                r#"count_over_time(up{job="jma-poller"}[1m]) >= 5 and up{job="jma-poller"} == 1"#,
            )
            .await
            .len()
                == 1
        },
    )
    .await;

    // Every panel query and variable query: parses (HTTP 200) and has data. Gauges refreshed
    // on the daemon's 10 s cycle and rates need two samples, so wait for them a while first.
    let dash = dashboard();
    let mut queries: Vec<(String, String)> = panel_queries(&dash)
        .into_iter()
        .map(|(title, q)| (title, concrete(&q, &target)))
        .collect();
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str().and_then(variable_query) {
            queries.push((
                format!("variable {}", v["name"].as_str().unwrap_or("?")),
                concrete(&q, &target),
            ));
        }
    }
    let empty = || async {
        let mut empty = Vec::new();
        for (title, q) in &queries {
            let (status, body) = prom.query(q).await;
            assert_eq!(status, 200, "panel {title:?}: {q} does not run: {body}");
            let n = body["data"]["result"].as_array().map_or(0, Vec::len);
            if n == 0 {
                empty.push(format!("{title}: {q}"));
            }
        }
        empty
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let mut without_data = empty().await;
    while !without_data.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        without_data = empty().await;
    }
    eprintln!(
        "real Prometheus: {} dashboard queries ran, {} with data",
        queries.len(),
        queries.len() - without_data.len()
    );
    assert!(
        without_data.is_empty(),
        "{} of {} dashboard queries returned no data:\n{}",
        without_data.len(),
        queries.len(),
        without_data.join("\n")
    );

    // Every alert rule was loaded, evaluates without error, carries a summary and a runbook,
    // and its expression runs as a query.
    let names = alert_names();
    wait_until(Duration::from_secs(30), "every rule evaluated", || async {
        let rules = prom.rules().await;
        rules.len() == names.len()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
    })
    .await;
    let rules = prom.rules().await;
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        assert!(names.iter().any(|n| n == name), "unexpected rule {name}");
        assert_eq!(rule["type"], "alerting", "{name}");
        assert_eq!(rule["health"], "ok", "{name}: {}", rule["lastError"]);
        for key in ["summary", "runbook"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| s.len() > 20),
                "{name}: no {key} annotation"
            );
        }
        let expr = rule["query"].as_str().expect("rule query");
        let (status, body) = prom.query(expr).await;
        assert_eq!(status, 200, "{name}: {expr}: {body}");
        assert_eq!(body["status"], "success", "{name}: {body}");
    }
    eprintln!(
        "real Prometheus: {} alert expressions ran and evaluate with health ok",
        rules.len()
    );
    daemon.stop().await;
}
