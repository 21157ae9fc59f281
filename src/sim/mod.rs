//! A simulator of the dmdata.jp API (Project DM-D.S.S), faithful to `dmdata-api.md` §12, for
//! `jma-poller demo` and the tests. It serves the list host and the data host on one port
//! (`/v2/...` lists, `/v1/{id}` bodies) over real HTTP, keeps a log of every request, and has a
//! knob for each fault the daemon must survive.
//!
//! Faithful points: Basic/Bearer/`?key=` auth with a JSON 401 on list paths and plain text on
//! data paths; items named after the provider's catalog (real classification ↔ identifier
//! pairs and file-name patterns, see [`data`]); newest-first lists with `type` (one = prefix,
//! 2–5 = exact full identifiers, more = 400) and `datetime` filters; opaque base64url cursor tokens; `nextPooling` always, `nextToken` only when more
//! remain; `nextPoolingInterval`; the 1-month window (hidden from lists, 403 on bodies);
//! `Dmdata-*` headers and no `Content-Encoding`; 429 from per-host budgets (50 per 5 minutes on
//! data, 2000 per 10 minutes on lists); a per-id 429 block (`Don't try to get the same data.`)
//! on a quick re-fetch when `repeat_fetch_window` is set; serials as strings. With
//! [`SimConfig::tls`] it speaks TLS 1.2/1.3 with HTTP/2 or HTTP/1.1 by ALPN, as the live service
//! does ([`tls`]).

pub mod archive;
pub mod bench;
pub mod data;
mod routes;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use archive::{ArchiveSpec, Hostile, SimArchive, TarFormat};
pub use data::{ExpectedFile, ItemSpec, Kind, SimItem};
pub use tls::{Handshake, SimTls};

/// Which end of a PuLL backlog larger than `limit` comes back first ([gap] in the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogOrder {
    /// The newest `limit` items, with nextToken towards older ones.
    NewestFirst,
    /// The `limit` items just after the cursor; the next PuLL returns the following ones.
    OldestFirst,
    /// The newest `limit` items and no nextToken at all: the rest is only reachable by
    /// listing again without a cursor.
    NewestWithoutToken,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub key: String,
    pub pooling_interval_ms: u64,
    pub backlog_order: BacklogOrder,
    /// Tokens older than this are refused with the documented 400.
    pub token_ttl: Option<Duration>,
    /// Body requests allowed per window (token bucket); None = unlimited.
    pub data_limit: Option<(u32, Duration)>,
    /// List requests allowed per window; None = unlimited.
    pub api_limit: Option<(u32, Duration)>,
    /// Retry-After seconds sent with a 429 (the WAF's real headers are undocumented).
    pub retry_after_on_429: Option<u64>,
    /// A body request for an id requested less than this long before starts a per-id block
    /// (`repeat_fetch_block`): as seen on the live data hosts (§15), every request of that id
    /// then gets 429 with the plain-text body `Don't try to get the same data.`, while other
    /// ids and the data budget are untouched. None = off.
    pub repeat_fetch_window: Option<Duration>,
    /// How long such a block lasts (about 40 minutes upstream).
    pub repeat_fetch_block: Duration,
    /// Items older than this are hidden from lists and 403 on bodies (the 1-month window).
    pub retention: Duration,
    /// Send `length`, `fileSize` and `nextPoolingInterval` as strings too (the docs allow it).
    pub numbers_as_strings: bool,
    /// The archive list ignores the cursor and returns nextToken forever (seen upstream for
    /// out-of-range dates).
    pub archive_endless: bool,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with this certificate instead of plain HTTP.
    /// Read at start.
    pub tls: Option<SimTls>,
    /// The random mixes ([`Sim::add_random`], [`Sim::add_history`], the demo) include zip items
    /// (documented as a `compression`, though no real file name ends in `.zip`).
    pub zip_items: bool,
    /// A refused cursor (expired, invalid) gets this 400 message instead of the documented
    /// ``Unexpected data  of search query `cursorToken`.`` (what an expired token gets is
    /// undocumented).
    pub cursor_refusal: Option<String>,
    /// Every `/v2/jmafile` request whose `type` holds one of these values is answered 400
    /// (a `type` the service will not take), with or without a cursor.
    pub refused_types: Vec<String>,
    /// Lists the account's contract does not cover, answered 402 `No contract.` (how the
    /// live lists answer an uncovered classification is undocumented; one client maps 402 to
    /// "no valid contract" on every call): `jmafile` (every jmafile list), `archive` (every
    /// archive list), or an archive classification (a list asking for it is refused; a list
    /// of every classification leaves its archives out).
    pub no_contract: Vec<String>,
    /// Whether the archive list's `datetime` start day is included. Undocumented; a live
    /// client found the first day missing (exclusive), which is the default here.
    pub archive_start: DateBound,
    /// Whether the archive list's `datetime` end day is included (the docs said exclusive
    /// until 2025-04, the default here).
    pub archive_end: DateBound,
}

/// How the archive list treats one bound of its `datetime` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateBound {
    Inclusive,
    Exclusive,
}

impl DateBound {
    /// Whether `date` is on the inner side of the bound `bound`, `after` for a start bound.
    pub fn admits(self, date: time::Date, bound: time::Date, after: bool) -> bool {
        match (self, after) {
            (DateBound::Inclusive, true) => date >= bound,
            (DateBound::Exclusive, true) => date > bound,
            (DateBound::Inclusive, false) => date <= bound,
            (DateBound::Exclusive, false) => date < bound,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            key: "sim-key".into(),
            pooling_interval_ms: 1600,
            backlog_order: BacklogOrder::NewestFirst,
            token_ttl: None,
            data_limit: Some((50, Duration::from_secs(300))),
            api_limit: Some((2000, Duration::from_secs(600))),
            retry_after_on_429: None,
            repeat_fetch_window: None,
            repeat_fetch_block: Duration::from_secs(40 * 60),
            retention: Duration::from_secs(31 * 86_400),
            numbers_as_strings: false,
            archive_endless: false,
            tls: None,
            zip_items: false,
            cursor_refusal: None,
            no_contract: Vec::new(),
            refused_types: Vec::new(),
            archive_start: DateBound::Exclusive,
            archive_end: DateBound::Exclusive,
        }
    }
}

/// A fault for the next list call(s).
#[derive(Debug, Clone)]
pub enum ListFault {
    Status(u16),
    /// Status with a `Retry-After: secs` header.
    RetryAfter(u16, u64),
    /// A 200 with this body (malformed JSON, missing fields …).
    Body(String),
    /// Answer after this delay.
    Delay(Duration),
}

/// A fault for the next body request(s).
#[derive(Debug, Clone)]
pub enum DataFault {
    Status(u16),
    RetryAfter(u16, u64),
    /// Send this many bytes, then break the connection.
    Truncate(usize),
    /// Flip a byte (a gzip body then fails its CRC).
    Corrupt,
    /// Send this many bytes, then go silent for the duration.
    Stall(usize, Duration),
}

/// Random faults for soak runs: each request draws independently.
#[derive(Debug, Clone, Default)]
pub struct RandomFaults {
    pub list_5xx: f64,
    pub list_429: f64,
    pub data_5xx: f64,
    pub data_429: f64,
    pub truncate: f64,
    pub corrupt: f64,
    pub stall: f64,
    /// Probability that a list call first invalidates every token.
    pub expire_tokens: f64,
}

#[derive(Debug, Default)]
pub struct Faults {
    /// Consumed in order by `/v2/jmafile` calls.
    pub list: VecDeque<ListFault>,
    /// Consumed in order by `/v2/archive` calls.
    pub archive_list: VecDeque<ListFault>,
    /// Consumed in order by body requests for any id.
    pub data: VecDeque<DataFault>,
    /// Consumed in order by body requests for that id.
    pub data_for: HashMap<String, VecDeque<DataFault>>,
    /// Refuse the key everywhere (a revoked key).
    pub reject_key: bool,
    pub random: Option<RandomFaults>,
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSeen {
    Basic,
    Bearer,
    QueryKey,
    Wrong,
    Missing,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub received: Instant,
    pub answered: Instant,
    pub path: String,
    pub query: String,
    /// `polling` or `next` when a cursorToken was sent.
    pub cursor_kind: Option<String>,
    pub auth: AuthSeen,
    pub status: u16,
    /// Item id, for body requests.
    pub id: Option<String>,
    pub host: String,
    /// The HTTP version the request came in (HTTP/2 over TLS with ALPN `h2`).
    pub version: axum::http::Version,
}

impl Request {
    pub fn is_list(&self) -> bool {
        self.path.starts_with("/v2/")
    }
    /// A PuLL (or baseline) list call, as opposed to a nextToken page.
    pub fn is_pull(&self) -> bool {
        self.path == "/v2/jmafile" && self.cursor_kind.as_deref() != Some("next")
    }
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    fn new((n, window): (u32, Duration)) -> Bucket {
        Bucket {
            capacity: n as f64,
            tokens: n as f64,
            per_sec: n as f64 / window.as_secs_f64(),
            last: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + (now - self.last).as_secs_f64() * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct World {
    items: Vec<SimItem>,
    next_serial: u64,
    /// Tokens issued before this epoch are refused (`expire_tokens`).
    epoch: u64,
    /// When each id was last requested (any answer but a block's).
    fetched_at: HashMap<String, Instant>,
    /// Ids blocked for a quick re-fetch, and until when.
    blocked_until: HashMap<String, Instant>,
    rng_seed: u64,
    last_received: Option<OffsetDateTime>,
    archives: Vec<SimArchive>,
    next_archive_serial: u64,
    sockets: Vec<serde_json::Value>,
}

#[derive(Debug)]
struct Inner {
    config: Mutex<SimConfig>,
    world: Mutex<World>,
    /// Held while one item or archive is built and published. Building (content, gzip, tar,
    /// hashes) takes seconds for a large body in a debug build; doing it under `world` would
    /// stall every request meanwhile, so adds are serialized here instead and take `world` only
    /// to reserve a serial and to publish, which keeps serials visible in order.
    publishing: Mutex<()>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Request>>,
    data_bucket: Mutex<Option<Bucket>>,
    api_bucket: Mutex<Option<Bucket>>,
    rejected_429: std::sync::atomic::AtomicU64,
    addr: SocketAddr,
    /// `https` in TLS mode, else `http`.
    scheme: &'static str,
    /// Every TLS handshake, in TLS mode.
    handshakes: Mutex<Vec<Handshake>>,
}

impl Inner {
    /// `scheme://127.0.0.1:PORT`: the base of the lists and of every item's url.
    fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator. Cheap to clone; stops when [`Sim::stop`] is called or the process ends.
#[derive(Debug, Clone)]
pub struct Sim {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Sim {
    /// Starts on `addr` (use `127.0.0.1:0` for a free port).
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let acceptor = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let inner = Arc::new(Inner {
            data_bucket: Mutex::new(config.data_limit.map(Bucket::new)),
            api_bucket: Mutex::new(config.api_limit.map(Bucket::new)),
            config: Mutex::new(config),
            world: Mutex::new(World {
                next_serial: 1,
                rng_seed: 42,
                ..World::default()
            }),
            publishing: Mutex::new(()),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            rejected_429: Default::default(),
            addr,
            scheme: if acceptor.is_some() { "https" } else { "http" },
            handshakes: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let app = routes::router(inner.clone());
        let until = stop.clone();
        match acceptor {
            None => {
                tokio::spawn(async move {
                    let serve =
                        axum::serve(listener, app).with_graceful_shutdown(until.cancelled_owned());
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "simulator stopped");
                    }
                });
            }
            Some(acceptor) => {
                let tls = tls::TlsListener::spawn(listener, acceptor, inner.clone(), stop.clone())?;
                tokio::spawn(async move {
                    let serve =
                        axum::serve(tls, app).with_graceful_shutdown(until.cancelled_owned());
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "simulator stopped");
                    }
                });
            }
        }
        Ok(Sim { inner, stop })
    }

    pub async fn start(config: SimConfig) -> std::io::Result<Sim> {
        Sim::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` in TLS mode), the value for `api.base_url`.
    pub fn base_url(&self) -> String {
        self.inner.origin()
    }

    pub fn key(&self) -> String {
        lock(&self.inner.config).key.clone()
    }

    pub fn config(&self) -> MutexGuard<'_, SimConfig> {
        lock(&self.inner.config)
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.inner.faults)
    }

    /// Adds one item, received now unless the spec says otherwise. Items added in a burst are
    /// spaced a second apart, as real products are, so their file names (which carry the
    /// time to the second) stay distinct.
    pub fn add(&self, spec: ItemSpec) -> SimItem {
        let _publishing = lock(&self.inner.publishing);
        let (serial, now) = {
            let mut w = lock(&self.inner.world);
            let mut now = OffsetDateTime::now_utc();
            if spec.received.is_none() {
                if let Some(last) = w.last_received {
                    now = now.max(last + time::Duration::seconds(1));
                }
                w.last_received = Some(now);
            }
            let serial = w.next_serial;
            w.next_serial += 1;
            (serial, now)
        };
        let item = data::build(serial, &spec, now);
        lock(&self.inner.world).items.push(item.clone());
        item
    }

    /// Adds `n` items of a realistic mix.
    pub fn add_random(&self, n: usize) -> Vec<SimItem> {
        let zip = lock(&self.inner.config).zip_items;
        let specs: Vec<ItemSpec> = {
            let mut w = lock(&self.inner.world);
            let mut rng = fastrand::Rng::with_seed(w.rng_seed);
            w.rng_seed = w.rng_seed.wrapping_add(n as u64 + 1);
            (0..n).map(|_| data::random_spec(&mut rng, zip)).collect()
        };
        specs.into_iter().map(|s| self.add(s)).collect()
    }

    /// Adds `n` items of a realistic mix received over the last `span` (a history to backfill).
    pub fn add_history(&self, n: usize, span: Duration) -> Vec<SimItem> {
        let now = OffsetDateTime::now_utc();
        let zip = lock(&self.inner.config).zip_items;
        let specs: Vec<ItemSpec> = {
            let mut w = lock(&self.inner.world);
            let mut rng = fastrand::Rng::with_seed(w.rng_seed);
            w.rng_seed = w.rng_seed.wrapping_add(n as u64 + 1);
            (0..n)
                .map(|i| {
                    let ago = span.mul_f64((n - i) as f64 / n.max(1) as f64);
                    ItemSpec {
                        received: Some(now - ago),
                        ..data::random_spec(&mut rng, zip)
                    }
                })
                .collect()
        };
        specs.into_iter().map(|s| self.add(s)).collect()
    }

    /// Publishes a daily archive.
    pub fn add_archive(&self, spec: ArchiveSpec) -> SimArchive {
        let _publishing = lock(&self.inner.publishing);
        let serial = {
            let mut w = lock(&self.inner.world);
            w.next_archive_serial += 1;
            w.next_archive_serial
        };
        let a = archive::build(serial, &spec);
        lock(&self.inner.world).archives.push(a.clone());
        a
    }

    /// Archives for the last `days` JST days (not today: a day is archived after it ends)
    /// for each classification.
    pub fn add_archive_days(&self, classifications: &[&str], days: u32) -> Vec<SimArchive> {
        let today = crate::model::time::jst_today();
        let mut out = Vec::new();
        for d in (1..=days as i64).rev() {
            for c in classifications {
                out.push(self.add_archive(ArchiveSpec::new(c, today - time::Duration::days(d))));
            }
        }
        out
    }

    /// Adds a WebSocket session to `GET /v2/socket` (`waiting`, `open` or `closed`).
    pub fn add_socket(&self, status: &str, app_name: &str) -> u64 {
        let mut w = lock(&self.inner.world);
        let id = 1000 + w.sockets.len() as u64;
        let now = data::rfc3339(OffsetDateTime::now_utc());
        let open = status == "open";
        w.sockets.push(serde_json::json!({
            "id": id,
            "ticket": if status == "waiting" { serde_json::json!(format!("ticket{id}")) } else { serde_json::Value::Null },
            "classifications": ["telegram.earthquake", "eew.forecast"],
            "test": "no",
            "types": null,
            "formats": ["xml", "json"],
            "appName": app_name,
            "start": now,
            "end": if status == "closed" { serde_json::json!(now) } else { serde_json::Value::Null },
            "ping": if open { serde_json::json!(now) } else { serde_json::Value::Null },
            "ipAddress": if open { serde_json::json!("192.0.2.10") } else { serde_json::Value::Null },
            "server": if open { serde_json::json!("websocket-03") } else { serde_json::Value::Null },
            "status": status,
        }));
        id
    }

    /// Limits a socket from [`Sim::add_socket`] to these data types (`types` null = all).
    pub fn set_socket_types(&self, id: u64, types: &[&str]) {
        let mut w = lock(&self.inner.world);
        if let Some(s) = w.sockets.iter_mut().find(|s| s["id"] == id) {
            s["types"] = serde_json::json!(types);
        }
    }

    pub fn archives(&self) -> Vec<SimArchive> {
        lock(&self.inner.world).archives.clone()
    }

    pub fn items(&self) -> Vec<SimItem> {
        lock(&self.inner.world).items.clone()
    }

    /// Every token issued so far is refused from now on (an expired cursor).
    pub fn expire_tokens(&self) {
        lock(&self.inner.world).epoch += 1;
    }

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.inner.log).clone()
    }

    /// Every TLS handshake so far, refused ones included (TLS mode only).
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.inner.handshakes).clone()
    }

    /// 429s the simulator's own budgets sent (not injected faults).
    pub fn rate_limited(&self) -> u64 {
        self.inner
            .rejected_429
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds a random item every `every` until the simulator stops (demo).
    pub fn spawn_generator(&self, every: Duration) {
        let sim = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = sim.stop.cancelled() => return,
                    _ = tick.tick() => { sim.add_random(1); }
                }
            }
        });
    }
}
