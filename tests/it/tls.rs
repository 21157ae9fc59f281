//! The live transport: the service speaks only TLS 1.2/1.3, with HTTP/2. The simulator serves
//! TLS with a certificate chain made here from a throwaway CA (root → intermediate → leaf for
//! 127.0.0.1 and localhost; nothing private is committed), offering `h2` and `http/1.1` by
//! ALPN; the daemon trusts the root through `api.ca_file` or `SSL_CERT_FILE`, through an
//! `HTTPS_PROXY` too, and says clearly what to set when it does not trust the certificate.

use jma_poller::state::prelude::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jma_poller::sim::{ItemSpec, Sim, SimConfig, SimItem, SimTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// A test PKI: a root CA, an intermediate, and the simulator's leaf signed by it.
struct TestCa {
    root_pem: String,
    sim_tls: SimTls,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let root = CertifiedIssuer::self_signed(ca_params(&format!("{name} root")), key())
            .expect("root CA");
        let intermediate =
            CertifiedIssuer::signed_by(ca_params(&format!("{name} intermediate")), key(), &root)
                .expect("intermediate CA");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "simulated api.dmdata.jp");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = key();
        let leaf_cert = leaf.signed_by(&leaf_key, &intermediate).expect("leaf");
        TestCa {
            root_pem: root.pem(),
            sim_tls: SimTls {
                // As servers send it: the leaf, then the intermediate; the root is the client's.
                cert_chain_pem: format!("{}{}", leaf_cert.pem(), intermediate.pem()),
                key_pem: leaf_key.serialize_pem(),
            },
        }
    }

    /// The root as a PEM file, for `api.ca_file` or `SSL_CERT_FILE`.
    fn write_root(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.root_pem).unwrap();
        path
    }
}

fn key() -> KeyPair {
    KeyPair::generate().expect("key pair")
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A simulator serving TLS with `ca`'s leaf, no rate limits, a short PuLL interval.
async fn tls_sim(ca: &TestCa) -> Sim {
    init_logs();
    Sim::start(SimConfig {
        pooling_interval_ms: 200,
        data_limit: None,
        api_limit: None,
        tls: Some(ca.sim_tls.clone()),
        ..SimConfig::default()
    })
    .await
    .expect("TLS simulator starts")
}

/// Every request the simulator answered came over HTTP/2, and every handshake agreed on `h2`.
fn assert_all_http2(sim: &Sim) {
    let requests = sim.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.version,
            reqwest::Version::HTTP_2,
            "{} {} came over {:?}",
            r.path,
            r.query,
            r.version
        );
        assert_eq!(
            r.host,
            sim.addr().to_string(),
            "the authority is the simulator"
        );
    }
    let handshakes = sim.handshakes();
    assert!(!handshakes.is_empty());
    for h in &handshakes {
        assert_eq!(h.error, None, "{h:?}");
        assert_eq!(h.alpn.as_deref(), Some("h2"), "{h:?}");
    }
}

/// Every item on disk with the right bytes, and each body requested exactly once.
fn assert_landed_once(env: &Env, sim: &Sim, items: &[SimItem]) {
    assert_all_landed(&env.data_dir, items);
    let fetched = fetches(sim);
    for item in items {
        assert_eq!(
            fetched.get(&item.id),
            Some(&1),
            "serial {}: one body request",
            item.serial
        );
    }
    assert!(tmp_leftovers(&env.data_dir).is_empty());
}

async fn wait_landed(env: &Env, items: &[SimItem]) {
    wait_until(Duration::from_secs(30), "every item lands", || async {
        all_landed(&env.data_dir, items)
    })
    .await;
}

/// Items of every kind the simulator makes (plain, gzip, zip, concat), listed as a backlog and
/// published while the daemon runs.
fn mixed_items(sim: &Sim, n: usize) -> Vec<SimItem> {
    let mut items = sim.add_random(n);
    items.push(sim.add(ItemSpec::default()));
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_over_tls_and_http2_trusting_the_ca_in_api_ca_file() {
    let ca = TestCa::new("jma-poller test CA");
    let sim = tls_sim(&ca).await;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let env = Env::new();
    let mut items = sim.add_history(8, Duration::from_secs(600));
    let mut settings = env.settings(&sim);
    settings.api.ca_file = Some(ca.write_root(env.root.path(), "ca.pem"));
    let daemon = Daemon::start(settings);
    wait_landed(&env, &items).await;
    items.extend(mixed_items(&sim, 6));
    wait_landed(&env, &items).await;
    daemon.stop().await;
    assert_landed_once(&env, &sim, &items);
    assert_all_http2(&sim);
    eprintln!(
        "api.ca_file: {} items over {} requests on {} TLS connection(s), all HTTP/2",
        items.len(),
        sim.requests().len(),
        sim.handshakes().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_trusts_the_ca_in_ssl_cert_file() {
    let ca = TestCa::new("jma-poller test CA");
    let sim = tls_sim(&ca).await;
    let env = Env::new();
    let mut items = sim.add_history(5, Duration::from_secs(600));
    let mut envs = env.binary_env(&sim);
    let bundle = ca.write_root(env.root.path(), "bundle.pem");
    envs.push(("SSL_CERT_FILE".into(), bundle.display().to_string()));
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_landed(&env, &items).await;
    items.extend(mixed_items(&sim, 4));
    wait_landed(&env, &items).await;
    let status = child.stop("-TERM", STOP_LIMIT).await;
    assert!(status.success(), "{status:?}");
    assert_landed_once(&env, &sim, &items);
    assert_all_http2(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_gives_one_clear_error_and_nothing_lands() {
    let ca = TestCa::new("jma-poller test CA");
    let sim = tls_sim(&ca).await;
    let env = Env::new();
    let items = sim.add_history(3, Duration::from_secs(600));
    // The daemon trusts another CA (a wrong bundle): the simulator's chain leads nowhere.
    let other = TestCa::new("some other CA");
    let mut envs = env.binary_env(&sim);
    envs.push((
        "JMA_POLLER__API__CA_FILE".into(),
        other
            .write_root(env.root.path(), "other.pem")
            .display()
            .to_string(),
    ));
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    // Two polls, so a repeat would show: the second comes after the backoff (15 to 30 s).
    wait_until(
        Duration::from_secs(90),
        "two refused handshakes",
        || async {
            sim.handshakes()
                .iter()
                .filter(|h| h.error.is_some())
                .count()
                >= 2
        },
    )
    .await;
    let status = child.stop("-TERM", STOP_LIMIT).await;
    assert!(
        status.success(),
        "the daemon ran on until stopped: {status:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR line, not one per poll:\n{text}");
    let host = sim.addr().to_string();
    for needed in [
        host.as_str(),
        "api.ca_file",
        "SSL_CERT_FILE",
        "UnknownIssuer",
    ] {
        assert!(
            errors[0].contains(needed),
            "{needed:?} missing: {}",
            errors[0]
        );
    }
    assert!(
        !text.contains("request failed") && !text.contains("error sending request"),
        "no generic transport message:\n{text}"
    );
    assert!(sim.requests().is_empty(), "no HTTP request got through");
    for item in &items {
        assert!(!landed(&env.data_dir, item));
    }
    assert!(files_under(&env.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_host_with_an_untrusted_certificate_pauses_downloads_without_using_attempts() {
    let ca = TestCa::new("jma-poller test CA");
    let sim = tls_sim(&ca).await;
    // The items' bodies live on another (trusted) host whose chain leads to a CA the daemon
    // does not know.
    let data_host = tls_sim(&TestCa::new("unknown data host CA")).await;
    let items: Vec<SimItem> = (0..2)
        .map(|_| {
            sim.add(ItemSpec {
                url_origin: Some(data_host.base_url()),
                ..ItemSpec::default()
            })
        })
        .collect();
    let env = Env::new();
    let mut envs = env.binary_env(&sim);
    envs.push((
        "JMA_POLLER__API__CA_FILE".into(),
        ca.write_root(env.root.path(), "ca.pem")
            .display()
            .to_string(),
    ));
    envs.push((
        "JMA_POLLER__API__TRUSTED_HOSTS".into(),
        data_host.addr().to_string(),
    ));
    let log = env.root.path().join("daemon.log");
    let mut child = spawn_bin(&["run"], &envs, &log);
    wait_until(Duration::from_secs(30), "downloads pause", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("downloads_paused"))
    })
    .await;
    let status = child.stop("-TERM", STOP_LIMIT).await;
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR line for the pause:\n{text}");
    let host = data_host.addr().to_string();
    for needed in [host.as_str(), "api.ca_file", "pausing downloads"] {
        assert!(
            errors[0].contains(needed),
            "{needed:?} missing: {}",
            errors[0]
        );
    }
    assert!(data_host.requests().is_empty());
    assert!(!data_host.handshakes().is_empty());
    // Not the items' fault: still queued, no attempt used up, the reason recorded.
    let report = env.store().await.status().await.unwrap();
    let failed: i64 = report
        .counts
        .iter()
        .filter(|c| c.state == "failed")
        .map(|c| c.items)
        .sum();
    assert_eq!(failed, 0, "{:?}", report.counts);
    let waiting: Vec<_> = report
        .recent_errors
        .iter()
        .filter(|e| items.iter().any(|i| i.id == e.id))
        .collect();
    assert!(!waiting.is_empty(), "{:?}", report.recent_errors);
    for e in waiting {
        assert_eq!(e.state, "pending", "{e:?}");
        assert_eq!(e.attempts, 0, "{e:?}");
        assert!(e.error.contains(&host), "{e:?}");
    }
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1:0 that records each tunnel's target.
struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let seen = tunnels.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, seen.clone()));
            }
        });
        ConnectProxy { addr, tunnels }
    }

    fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap().clone()
    }
}

/// Reads `CONNECT host:port HTTP/1.1` and its headers, connects, answers 200, then relays.
async fn tunnel(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    seen.lock().unwrap().push(target.to_owned());
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_is_honoured_and_no_proxy_bypasses_it() {
    let ca = TestCa::new("jma-poller test CA");
    let sim = tls_sim(&ca).await;
    let proxy = ConnectProxy::start().await;
    let env = Env::new();
    let mut items = sim.add_history(4, Duration::from_secs(600));
    let mut envs = env.binary_env(&sim);
    envs.push((
        "JMA_POLLER__API__CA_FILE".into(),
        ca.write_root(env.root.path(), "ca.pem")
            .display()
            .to_string(),
    ));
    let log = env.root.path().join("daemon.log");

    let mut proxied = envs.clone();
    proxied.push(("HTTPS_PROXY".into(), format!("http://{}", proxy.addr)));
    let mut child = spawn_bin(&["run"], &proxied, &log);
    wait_landed(&env, &items).await;
    items.extend(mixed_items(&sim, 3));
    wait_landed(&env, &items).await;
    assert!(child.stop("-TERM", STOP_LIMIT).await.success());
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "the daemon went through the proxy");
    assert!(
        tunnels.iter().all(|t| *t == sim.addr().to_string()),
        "every tunnel led to the simulator: {tunnels:?}"
    );
    assert_eq!(
        tunnels.len(),
        sim.handshakes().len(),
        "every TLS connection the simulator saw came through the proxy"
    );

    // NO_PROXY names the host: straight there, the proxy unused.
    let mut direct = proxied.clone();
    direct.push(("NO_PROXY".into(), "127.0.0.1".into()));
    let mut child = spawn_bin(&["run"], &direct, &log);
    items.extend(mixed_items(&sim, 3));
    wait_landed(&env, &items).await;
    assert!(child.stop("-TERM", STOP_LIMIT).await.success());
    assert_eq!(proxy.tunnels().len(), tunnels.len(), "NO_PROXY bypassed it");
    assert!(
        sim.handshakes().len() > tunnels.len(),
        "new connections, direct"
    );

    assert_landed_once(&env, &sim, &items);
    assert_all_http2(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_calls_share_one_http2_connection() {
    let ca = TestCa::new("jma-poller test CA");
    let sim = tls_sim(&ca).await;
    sim.add_history(3, Duration::from_secs(600));
    let env = Env::new();
    let mut settings = env.settings(&sim);
    settings.api.ca_file = Some(ca.write_root(env.root.path(), "ca.pem"));
    let key = settings.api_key().unwrap();
    let client = jma_poller::api::Client::new(&settings, key).expect("client");
    let query = [("limit", "100".to_owned())];
    let started = Instant::now();
    let first = client
        .list("/v2/jmafile", &query)
        .await
        .expect("first call");
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    client
        .list("/v2/jmafile", &query)
        .await
        .expect("second call");
    let second_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(first.items.len(), 3);
    assert_eq!(sim.requests().len(), 2);
    assert_eq!(
        sim.handshakes().len(),
        1,
        "the second call reused the connection"
    );
    let h = &sim.handshakes()[0];
    assert!(
        matches!(h.protocol.as_deref(), Some("TLSv1_3")),
        "TLS 1.3 preferred: {h:?}"
    );
    assert_all_http2(&sim);
    // A figure for the record (debug build, loaded machine); never asserted.
    eprintln!(
        "TLS handshake + first list call: {first_ms:.1} ms; next call on the same HTTP/2 connection: {second_ms:.1} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_ca_file_or_ssl_cert_file_stops_the_start_naming_it() {
    let sim = tls_sim(&TestCa::new("jma-poller test CA")).await;
    let env = Env::new();
    let not_pem = env.root.path().join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let missing = env.root.path().join("missing.pem");
    let cases: Vec<(&str, &Path, &str)> = vec![
        ("JMA_POLLER__API__CA_FILE", &missing, "api.ca_file"),
        ("JMA_POLLER__API__CA_FILE", &not_pem, "api.ca_file"),
        ("SSL_CERT_FILE", &missing, "SSL_CERT_FILE"),
        ("SSL_CERT_FILE", &not_pem, "SSL_CERT_FILE"),
    ];
    let log = env.root.path().join("start.log");
    for command in ["run", "check-config"] {
        for (var, path, named) in &cases {
            std::fs::write(&log, b"").unwrap();
            let mut envs = env.binary_env(&sim);
            envs.push((var.to_string(), path.display().to_string()));
            let mut child = spawn_bin(&[command], &envs, &log);
            let status = child.exit_within(Duration::from_secs(20), command).await;
            let text = std::fs::read_to_string(&log).unwrap();
            assert_eq!(status.code(), Some(2), "{command} {var}={path:?}: {text}");
            assert!(
                text.contains(named) && text.contains(&path.display().to_string()),
                "{command} {var}: the message names {named} and the file: {text}"
            );
        }
    }
    assert!(sim.handshakes().is_empty(), "nothing was contacted");
}
