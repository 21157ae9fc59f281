//! Settings: built-in defaults, then a TOML file (`--config FILE`), then environment variables
//! `JMA_POLLER__SECTION__KEY` (env wins). Every value is checked here, before any network or
//! disk work, and an error always names the key the operator has to fix.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::state::DatabaseTarget;
use crate::state::postgres::PgTarget;

/// Prefix of the environment variables that override the file, e.g. `JMA_POLLER__API__KEY`.
pub const ENV_PREFIX: &str = "JMA_POLLER";

/// A configuration problem, always tied to the key (or file) that causes it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

impl ConfigError {
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// A secret string: prints as `***` in `Debug`, `Display` and serialized output, so it can
/// never reach a log line or `check-config` by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The only way to read the value; grep for it to audit where the key goes.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub api: ApiSettings,
    pub storage: StorageSettings,
    pub jmafile: JmaFileSettings,
    pub archive: ArchiveSettings,
    pub download: DownloadSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub server: ServerSettings,
    pub hooks: HookSettings,
    pub monitor: MonitorSettings,
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Where the list APIs live. Its host (and port) always receives the key.
    pub base_url: Url,
    /// The API key. Prefer `key_file` outside development: env vars leak into child processes.
    pub key: Option<Secret>,
    /// A file holding the key (systemd credential, Docker secret); trailing newline ignored.
    pub key_file: Option<PathBuf>,
    /// Total deadline of one list call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra hosts that may receive the key: `host`, `host:port` or `*.suffix`.
    pub trusted_hosts: Vec<String>,
    /// A PEM bundle of CA certificates trusted on top of the system's (or `SSL_CERT_FILE`'s):
    /// a private CA, or the one of a TLS-inspecting proxy. Read by the commands that talk to
    /// the API, at start ([`crate::api::tls`]).
    pub ca_file: Option<PathBuf>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            base_url: Url::parse("https://api.dmdata.jp").expect("static URL parses"),
            key: None,
            key_file: None,
            timeout: Duration::from_secs(30),
            trusted_hosts: vec!["*.api.dmdata.jp".to_owned()],
            ca_file: None,
        }
    }
}

/// `Debug` by hand: `database` may be a URL with a password, shown as `***`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Root of the mirror; also holds `.tmp/` for partial files (same filesystem, so the final
    /// rename is atomic).
    pub data_dir: PathBuf,
    /// Where the state lives: a SQLite file (default `{data_dir}/state.sqlite`), or a
    /// PostgreSQL URL (`postgres://user@host:5432/db?sslmode=verify-full&sslrootcert=…`).
    pub database: Option<PathBuf>,
    /// The PostgreSQL password, from this file (a systemd credential `database_password` is
    /// read when unset), unless the URL carries one.
    pub database_password_file: Option<PathBuf>,
    /// Remove files (and their rows) older than this; off when unset. Age is the item's
    /// `receivedTime` (an archive's date). Items still queued or in flight are never touched.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Pause downloads while the data dir's filesystem has less free space than this.
    pub min_free: ByteSize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        // Under systemd, StateDirectory= hands us the directory it created for us.
        let data_dir = std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/jma-poller"));
        StorageSettings {
            data_dir,
            database: None,
            database_password_file: None,
            retention: None,
            min_free: ByteSize::mib(256),
        }
    }
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageSettings")
            .field("data_dir", &self.data_dir)
            .field("database", &self.database_shown())
            .field("database_password_file", &self.database_password_file)
            .field("retention", &self.retention)
            .field("min_free", &self.min_free)
            .finish()
    }
}

impl StorageSettings {
    /// The SQLite file (meaningless when `storage.database` is a URL: see
    /// [`StorageSettings::database_target`]).
    pub fn database_path(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.data_dir.join("state.sqlite"))
    }

    /// `storage.database` when it is a URL (anything with `://`) rather than a path.
    pub fn database_url(&self) -> Option<&str> {
        let text = self.database.as_deref()?.to_str()?;
        text.contains("://").then_some(text)
    }

    /// How to name the database to an operator: the path, or the URL without its password.
    pub fn database_shown(&self) -> String {
        match self.database_url() {
            Some(url) => crate::state::postgres::redact(url),
            None => self.database_path().display().to_string(),
        }
    }

    /// Where the state lives: the SQLite file, or the PostgreSQL database with its password
    /// (from the URL, `storage.database_password_file` or the systemd credential
    /// `database_password`).
    pub fn database_target(&self) -> Result<DatabaseTarget, ConfigError> {
        let Some(url) = self.database_url() else {
            return Ok(DatabaseTarget::Sqlite(self.database_path()));
        };
        let password = self.database_password()?;
        let target = PgTarget::parse(url, password.as_ref().map(Secret::expose))
            .map_err(|m| ConfigError::invalid("storage.database", m))?;
        Ok(DatabaseTarget::Postgres(Box::new(target)))
    }

    /// A database named on the command line (`state copy --to/--from`): a URL (anything with
    /// `://`) is PostgreSQL, with the password from the URL or else from the same file or
    /// credential as `storage.database`'s; anything else is a SQLite file.
    pub fn target_named(&self, key: &str, text: &str) -> Result<DatabaseTarget, ConfigError> {
        if !text.contains("://") {
            return Ok(DatabaseTarget::Sqlite(PathBuf::from(text)));
        }
        let password = self.database_password()?;
        let target = PgTarget::parse(text, password.as_ref().map(Secret::expose))
            .map_err(|m| ConfigError::invalid(key, m))?;
        Ok(DatabaseTarget::Postgres(Box::new(target)))
    }

    /// The password file's first line, if a file names one.
    fn database_password(&self) -> Result<Option<Secret>, ConfigError> {
        const KEY: &str = "storage.database_password_file";
        let path = match &self.database_password_file {
            Some(path) => path.clone(),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join("database_password"))
                .filter(|p| p.is_file())
            {
                Some(path) => path,
                None => return Ok(None),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::invalid(KEY, format!("cannot read {}: {e}", path.display()))
        })?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(ConfigError::invalid(
                KEY,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(Secret::new(password)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JmaFileSettings {
    pub enabled: bool,
    /// Data identifiers (HEADER_VALUES) and prefixes of them, any number: each prefix is a
    /// PuLL stream of its own, full identifiers go 2–5 to a stream (see `poll::streams`).
    pub types: Vec<String>,
    /// Items per list call (the API allows at most 100).
    pub limit: u32,
    /// How far back to fetch on the very first start.
    #[serde(with = "humantime_serde")]
    pub backfill: Duration,
}

impl Default for JmaFileSettings {
    fn default() -> Self {
        JmaFileSettings {
            enabled: true,
            types: Vec::new(),
            limit: 100,
            backfill: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// Mirror the daily archives (`GET /v2/archive`); needs a contract per classification.
    pub enabled: bool,
    /// Classifications to mirror, e.g. `telegram.earthquake`; empty = all the list returns.
    pub classifications: Vec<String>,
    /// How often to look for new archives. They appear around 00:30 JST for the previous day,
    /// and late ones must still be picked up, so this is a plain periodic check.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// First start only: archives whose date is within this window; `0` = only new ones.
    #[serde(with = "humantime_serde")]
    pub backfill: Duration,
    /// Keep the downloaded `.tar.gz` beside the unpacked files.
    pub keep_tarball: bool,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings {
            enabled: false,
            classifications: Vec::new(),
            check_interval: Duration::from_secs(3600),
            backfill: Duration::from_secs(7 * 86_400),
            keep_tarball: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadSettings {
    /// Parallel downloads (the data budget still applies on top).
    pub concurrency: u32,
    /// Attempts before a transiently failing item is marked failed.
    pub max_attempts: u32,
    /// Cap on the decompressed bytes of one item (decompression-bomb guard).
    pub max_size: ByteSize,
    /// A body that sends nothing for this long is abandoned and retried.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// No item's url is requested again sooner than this after the previous request of the
    /// same id, whatever the reason (retry, restart, `retry-failed`). The data hosts block an
    /// id that is fetched again soon (§15 of the API notes), so a broken body is not re-fetched
    /// after a second or two. `0` turns the hold off (the simulator, benchmarks).
    #[serde(with = "humantime_serde")]
    pub refetch_delay: Duration,
    /// How long an id waits after a data host answered 429 `Don't try to get the same data.`
    /// for it: such a block was seen to last about 40 minutes, for that id only.
    #[serde(with = "humantime_serde")]
    pub same_id_backoff: Duration,
}

impl Default for DownloadSettings {
    fn default() -> Self {
        DownloadSettings {
            concurrency: 2,
            max_attempts: 8,
            max_size: ByteSize::gib(1),
            read_timeout: Duration::from_secs(60),
            refetch_delay: Duration::from_secs(60),
            same_id_backoff: Duration::from_secs(45 * 60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Body downloads (GETs of an item's `url`) allowed per `data_window`; 0 = unlimited.
    pub data_requests: u32,
    #[serde(with = "humantime_serde")]
    pub data_window: Duration,
    /// How many body downloads may go out back to back before pacing spreads the rest evenly.
    /// Unset = [`LimitSettings::effective_data_burst`]. Read it through that method.
    pub data_burst: Option<u32>,
    /// List calls under `api.base_url` allowed per `api_window`; 0 = unlimited.
    pub api_requests: u32,
    #[serde(with = "humantime_serde")]
    pub api_window: Duration,
    /// Unset = [`LimitSettings::effective_api_burst`]. Read it through that method.
    pub api_burst: Option<u32>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            data_requests: 50,
            data_window: Duration::from_secs(300),
            data_burst: None,
            api_requests: 2000,
            api_window: Duration::from_secs(600),
            api_burst: None,
        }
    }
}

/// Default bursts: a fixed size that suits the provider's limits, but never more than the
/// budget itself, so a smaller contract (`data_requests = 8`) works without also setting the
/// burst.
const DEFAULT_DATA_BURST: u32 = 10;
const DEFAULT_API_BURST: u32 = 20;

impl LimitSettings {
    /// The data burst in force: `data_burst` if set, else `min(10, data_requests)`.
    pub fn effective_data_burst(&self) -> u32 {
        self.data_burst
            .unwrap_or(DEFAULT_DATA_BURST.min(self.data_requests))
    }

    /// The list-call burst in force: `api_burst` if set, else `min(20, api_requests)`.
    pub fn effective_api_burst(&self) -> u32 {
        self.api_burst
            .unwrap_or(DEFAULT_API_BURST.min(self.api_requests))
    }
}

/// The optional HTTP listener for health checks and Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// e.g. `127.0.0.1:9464`; off when unset.
    pub listen: Option<std::net::SocketAddr>,
    /// `/readyz` fails when the last successful poll is older than this.
    #[serde(with = "humantime_serde")]
    pub ready_staleness: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: None,
            ready_staleness: Duration::from_secs(120),
        }
    }
}

/// Freshness: when a classification counts as late (`/metrics`, `status`, the status page).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    /// A classification is late when nothing newer has arrived for this many times its usual
    /// gap between arrivals.
    pub late_factor: f64,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings { late_factor: 3.0 }
    }
}

/// Who this node is among those sharing one state store, and how long its leases last.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This node's identity: its claims, leases and staging directory (`.tmp/{node_id}/`) carry
    /// it. Default: the host name. Two live processes with one id are refused.
    pub node_id: Option<String>,
    /// How long a node's lease on a source (and its registration) lasts without renewal; a
    /// standby takes over a dead leader's source within about this long. Renewed every third.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: None,
            lease: Duration::from_secs(15),
        }
    }
}

impl ClusterSettings {
    /// The node id in use: the setting, or the host name.
    pub fn node(&self) -> crate::model::NodeId {
        match &self.node_id {
            Some(id) => crate::model::NodeId(id.clone()),
            None => crate::model::NodeId::from_host(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.node_id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && !id.starts_with('.')
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(ConfigError::invalid(
                    "cluster.node_id",
                    format!(
                        "{id:?} is not a node id: use 1 to 64 of A-Z a-z 0-9 . - _ (not starting \
                         with a dot), e.g. the host name"
                    ),
                ));
            }
        }
        if !(Duration::from_secs(3)..=Duration::from_secs(600)).contains(&self.lease) {
            return Err(ConfigError::invalid(
                "cluster.lease",
                format!(
                    "{} is out of range: use 3s to 10m (default 15s); failover takes about this long",
                    humantime::format_duration(self.lease)
                ),
            ));
        }
        Ok(())
    }
}

/// A command run for every landed item, so downstream processing can follow the mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookSettings {
    /// Program and arguments (no shell); the item's path is appended as the last argument and
    /// passed in `JMA_POLLER_PATH` with `JMA_POLLER_ID`, `_SERIAL`, `_CLASSIFICATION`,
    /// `_SOURCE`. Empty = no hook.
    pub on_file: Vec<String>,
    /// A run taking longer is killed and counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Runs before a failing hook is given up (the item itself stays done).
    pub max_attempts: u32,
}

impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            on_file: Vec::new(),
            timeout: Duration::from_secs(60),
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text, coloured only when stderr is a terminal.
    Auto,
    /// One JSON object per line (journald, Docker, Loki).
    Json,
    /// Human-readable text, always.
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// tracing filter, e.g. `info` or `info,jma_poller=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Auto,
            level: "info".to_owned(),
        }
    }
}

/// Loads settings from the optional file and the process environment.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    load_from(path, std::env::vars())
}

/// Like [`load`], with the environment given explicitly (tests pass their own).
pub fn load_from(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "no such file".to_owned(),
            });
        }
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("api.trusted_hosts")
            .with_list_parse_key("jmafile.types")
            .with_list_parse_key("archive.classifications")
            .with_list_parse_key("hooks.on_file")
            .source(Some(env)),
    );
    let merged = builder.build().map_err(|e| match path {
        Some(path) => ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        },
        None => ConfigError::invalid("environment", e.to_string()),
    })?;
    let settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid {
            key: if key == "." { "config".into() } else { key },
            message: e.into_inner().to_string(),
        }
    })?;
    settings.validate()?;
    Ok(settings)
}

fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

impl Settings {
    /// Checks every value that serde cannot: ranges, combinations, URL safety.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_api()?;
        self.validate_jmafile()?;
        self.validate_storage_and_hooks()?;
        self.validate_monitor()?;
        self.cluster.validate()?;
        self.validate_archive()?;
        self.validate_download()?;
        self.validate_limits()?;
        self.validate_log()?;
        Ok(())
    }

    /// `api`: a URL the key may go to, one key source, trusted host patterns.
    fn validate_api(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        match api.base_url.scheme() {
            "https" => {}
            "http" => {
                let loopback = api.base_url.host().is_some_and(|h| is_loopback_host(&h));
                if !loopback {
                    return Err(ConfigError::invalid(
                        "api.base_url",
                        "plain http would send the API key in clear text; use https \
                         (http is accepted only for 127.0.0.1/localhost, e.g. the simulator)",
                    ));
                }
            }
            other => {
                return Err(ConfigError::invalid(
                    "api.base_url",
                    format!("scheme {other:?} is not supported; use https://"),
                ));
            }
        }
        if api.base_url.host_str().is_none() {
            return Err(ConfigError::invalid("api.base_url", "has no host"));
        }
        if api.key.is_some() && api.key_file.is_some() {
            return Err(ConfigError::invalid(
                "api.key_file",
                "both api.key and api.key_file are set; keep only one",
            ));
        }
        if let Some(url) = self.storage.database_url() {
            PgTarget::parse(url, None).map_err(|m| ConfigError::invalid("storage.database", m))?;
            let has_password = url::Url::parse(url).is_ok_and(|u| u.password().is_some());
            if has_password && self.storage.database_password_file.is_some() {
                return Err(ConfigError::invalid(
                    "storage.database_password_file",
                    "the storage.database URL carries a password too; keep only one",
                ));
            }
        }
        if api.timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid("api.timeout", "must be at least 1s"));
        }
        for (i, pattern) in api.trusted_hosts.iter().enumerate() {
            crate::api::trust::HostPattern::parse(pattern).map_err(|message| {
                ConfigError::invalid(&format!("api.trusted_hosts[{i}]"), message)
            })?;
        }
        Ok(())
    }

    /// `jmafile`: data identifiers, backfill within the month the API keeps, page size.
    fn validate_jmafile(&self) -> Result<(), ConfigError> {
        let jf = &self.jmafile;
        for (i, t) in jf.types.iter().enumerate() {
            if t.is_empty() || t.contains(',') || t.chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    &format!("jmafile.types[{i}]"),
                    format!("{t:?} is not a data identifier (no commas or spaces)"),
                ));
            }
        }
        if jf.backfill > Duration::from_secs(31 * 86_400) {
            return Err(ConfigError::invalid(
                "jmafile.backfill",
                "more than 31d; the API keeps jmafile data for about one month",
            ));
        }
        if !(1..=100).contains(&jf.limit) {
            return Err(ConfigError::invalid(
                "jmafile.limit",
                format!("{} is out of range 1..=100", jf.limit),
            ));
        }
        Ok(())
    }

    /// `storage.retention` and `hooks`.
    fn validate_storage_and_hooks(&self) -> Result<(), ConfigError> {
        if let Some(r) = self.storage.retention
            && r < Duration::from_secs(3600)
        {
            return Err(ConfigError::invalid(
                "storage.retention",
                "must be at least 1h (or unset to keep everything)",
            ));
        }
        if let Some(program) = self.hooks.on_file.first() {
            if program.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "hooks.on_file",
                    "the program name is empty",
                ));
            }
            if self.hooks.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    "hooks.timeout",
                    "must be longer than 0s",
                ));
            }
            if self.hooks.max_attempts == 0 {
                return Err(ConfigError::invalid(
                    "hooks.max_attempts",
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// `monitor.late_factor`.
    fn validate_monitor(&self) -> Result<(), ConfigError> {
        let factor = self.monitor.late_factor;
        if !(1.0..=1000.0).contains(&factor) {
            return Err(ConfigError::invalid(
                "monitor.late_factor",
                format!("{factor} is out of range: use a number from 1 to 1000 (default 3)"),
            ));
        }
        Ok(())
    }

    /// `archive`: classification names, check interval, backfill.
    fn validate_archive(&self) -> Result<(), ConfigError> {
        let ar = &self.archive;
        for (i, c) in ar.classifications.iter().enumerate() {
            if crate::storage::safe_component(c).is_err()
                || c.contains(',')
                || c.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::invalid(
                    &format!("archive.classifications[{i}]"),
                    format!("{c:?} is not a classification name such as \"telegram.earthquake\""),
                ));
            }
        }
        if ar.check_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "archive.check_interval",
                "must be at least 1s (archives appear once a day; 1h is plenty)",
            ));
        }
        if ar.backfill > Duration::from_secs(5 * 366 * 86_400) {
            return Err(ConfigError::invalid(
                "archive.backfill",
                "more than 5 years; use `jma-poller backfill` for history",
            ));
        }
        Ok(())
    }

    /// `download`: workers, attempts, sizes, timeouts, delays.
    fn validate_download(&self) -> Result<(), ConfigError> {
        let dl = &self.download;
        if !(1..=64).contains(&dl.concurrency) {
            return Err(ConfigError::invalid(
                "download.concurrency",
                format!("{} is out of range 1..=64", dl.concurrency),
            ));
        }
        if !(1..=1000).contains(&dl.max_attempts) {
            return Err(ConfigError::invalid(
                "download.max_attempts",
                format!("{} is out of range 1..=1000", dl.max_attempts),
            ));
        }
        if dl.max_size.as_u64() < 1024 {
            return Err(ConfigError::invalid(
                "download.max_size",
                "must be at least 1 KiB",
            ));
        }
        if dl.read_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "download.read_timeout",
                "must be at least 1s",
            ));
        }
        // At most an hour: no retry is ever scheduled further ahead than that (a schedule two
        // hours ahead is taken for a wall clock that went back, see state::CLOCK_JUMP_MS).
        // refetch_delay may be 0 (the simulator, benchmarks); a blocked id never retries at
        // once.
        for (key, value, min) in [
            ("download.refetch_delay", dl.refetch_delay, Duration::ZERO),
            (
                "download.same_id_backoff",
                dl.same_id_backoff,
                Duration::from_secs(1),
            ),
        ] {
            if !(min..=Duration::from_secs(3600)).contains(&value) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} is out of range {}..=1h",
                        humantime::format_duration(value),
                        humantime::format_duration(min)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `limits`: request budgets.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (prefix, requests, window, burst) in [
            (
                "limits.data",
                l.data_requests,
                l.data_window,
                l.effective_data_burst(),
            ),
            (
                "limits.api",
                l.api_requests,
                l.api_window,
                l.effective_api_burst(),
            ),
        ] {
            if requests == 0 {
                continue;
            }
            if window.is_zero() {
                return Err(ConfigError::invalid(
                    &format!("{prefix}_window"),
                    "must be longer than 0s",
                ));
            }
            if burst == 0 || burst > requests {
                return Err(ConfigError::invalid(
                    &format!("{prefix}_burst"),
                    format!("{burst} must be between 1 and {prefix}_requests ({requests})"),
                ));
            }
        }
        Ok(())
    }

    /// `log.level`: a filter tracing can parse.
    fn validate_log(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::builder()
            .parse(&self.log.level)
            .is_err()
        {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "{:?} is not a log filter (try \"info\" or \"info,jma_poller=debug\")",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    /// The API key, from `api.key`, `api.key_file`, or a systemd credential named `api_key`.
    /// Only commands that talk to the API call this, so `status` works without a key.
    pub fn api_key(&self) -> Result<Secret, ConfigError> {
        let (key, source) = if let Some(key) = &self.api.key {
            (key.expose().to_owned(), "api.key")
        } else if let Some(path) = &self.api.key_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(
                    "api.key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            (text, "api.key_file")
        } else if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(PathBuf::from)
            .filter(|d| d.join("api_key").is_file())
        {
            let path = dir.join("api_key");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid(
                    "api.key_file",
                    format!("cannot read systemd credential {}: {e}", path.display()),
                )
            })?;
            (text, "api.key_file")
        } else {
            return Err(ConfigError::invalid(
                "api.key",
                "no API key: set JMA_POLLER__API__KEY, or api.key_file (a file such as a \
                 systemd credential or Docker secret); `jma-poller demo` needs none",
            ));
        };
        let key = key.trim_end_matches(['\r', '\n']);
        if key.is_empty() {
            return Err(ConfigError::invalid(source, "the API key is empty"));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::invalid(
                source,
                "the API key contains spaces or control characters",
            ));
        }
        Ok(Secret::new(key))
    }

    /// The effective configuration as TOML, secrets shown as `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.storage.database = Some(PathBuf::from(self.storage.database_shown()));
        shown.limits.data_burst = Some(self.limits.effective_data_burst());
        shown.limits.api_burst = Some(self.limits.effective_api_burst());
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err_of(r: Result<Settings, ConfigError>) -> String {
        r.expect_err("expected a config error").to_string()
    }

    #[test]
    fn the_example_file_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/jma-poller.toml");
        let from_file = load_from(Some(&path), env(&[])).unwrap();
        let mut defaults = Settings::default();
        defaults.storage.data_dir = "/var/lib/jma-poller".into();
        assert_eq!(from_file.to_toml(), defaults.to_toml());
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let s = load_from(None, env(&[])).unwrap();
        assert_eq!(s.api.base_url.as_str(), "https://api.dmdata.jp/");
        assert_eq!(s.jmafile.limit, 100);
        assert_eq!(s.jmafile.backfill, Duration::from_secs(3600));
        assert_eq!(s.limits.data_requests, 50);
        assert_eq!(s.limits.data_window, Duration::from_secs(300));
        assert_eq!(s.limits.api_requests, 2000);
        assert_eq!(s.limits.api_window, Duration::from_secs(600));
        assert_eq!(s.download.refetch_delay, Duration::from_secs(60));
        assert_eq!(s.download.same_id_backoff, Duration::from_secs(2700));
    }

    #[test]
    fn env_overrides_file_and_lists_split_on_commas() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[jmafile]\nlimit = 50\nbackfill = \"2h\"\n[download]\nconcurrency = 3\n",
        )
        .unwrap();
        let s = load_from(
            Some(&file),
            env(&[
                ("JMA_POLLER__JMAFILE__LIMIT", "20"),
                ("JMA_POLLER__JMAFILE__TYPES", "RDR_GPV,SRF_GPV"),
                ("JMA_POLLER__DOWNLOAD__MAX_SIZE", "10 MiB"),
            ]),
        )
        .unwrap();
        assert_eq!(s.jmafile.limit, 20, "env wins over the file");
        assert_eq!(s.jmafile.backfill, Duration::from_secs(7200));
        assert_eq!(s.download.concurrency, 3);
        assert_eq!(s.jmafile.types, vec!["RDR_GPV", "SRF_GPV"]);
        assert_eq!(s.download.max_size, ByteSize::mib(10));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("JMA_POLLER__JMAFILE__LIMIT", "500")], "jmafile.limit"),
            (&[("JMA_POLLER__API__TIMEOUT", "soon")], "api.timeout"),
            (&[("JMA_POLLER__API__BOGUS", "1")], "bogus"),
            (
                &[("JMA_POLLER__API__BASE_URL", "http://example.com")],
                "api.base_url",
            ),
            (
                &[("JMA_POLLER__LIMITS__DATA_BURST", "0")],
                "limits.data_burst",
            ),
            (&[("JMA_POLLER__LOG__LEVEL", "info,[[[")], "log.level"),
            (
                &[("JMA_POLLER__JMAFILE__BACKFILL", "20000years")],
                "jmafile.backfill",
            ),
            (
                &[("JMA_POLLER__STORAGE__RETENTION", "5m")],
                "storage.retention",
            ),
            (
                &[("JMA_POLLER__JMAFILE__TYPES", "RDR_GPV,SRF GPV")],
                "jmafile.types[1]",
            ),
            (
                &[("JMA_POLLER__DOWNLOAD__REFETCH_DELAY", "2h")],
                "download.refetch_delay",
            ),
            (
                &[("JMA_POLLER__DOWNLOAD__SAME_ID_BACKOFF", "3h")],
                "download.same_id_backoff",
            ),
            (
                &[
                    ("JMA_POLLER__LIMITS__DATA_REQUESTS", "8"),
                    ("JMA_POLLER__LIMITS__DATA_BURST", "9"),
                ],
                "limits.data_burst",
            ),
            (
                &[
                    ("JMA_POLLER__LIMITS__API_REQUESTS", "5"),
                    ("JMA_POLLER__LIMITS__API_BURST", "6"),
                ],
                "limits.api_burst",
            ),
        ];
        for (vars, key) in cases {
            let msg = err_of(load_from(None, env(vars)));
            assert!(msg.contains(key), "{vars:?}: {msg:?} should name {key}");
        }
    }

    #[test]
    fn any_number_of_jmafile_types_is_accepted() {
        // The planner splits them into as many PuLL streams as the API needs.
        let six = "FLA_GPV_Rjp_ANAL,MET_INF_Jdosha_Ggis1km_ANAL,NOWC_GPV_Ggis1km_Plts10_FH0000-0100,\
                   RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL,SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06,WPR_SEQ_RS-all_Pww";
        let six = six.replace(' ', "");
        let s = load_from(None, env(&[("JMA_POLLER__JMAFILE__TYPES", &six)])).unwrap();
        assert_eq!(s.jmafile.types.len(), 6);
    }

    #[test]
    fn bursts_default_to_what_the_budget_allows_and_check_config_shows_them() {
        let s = load_from(None, env(&[])).unwrap();
        assert_eq!(s.limits.effective_data_burst(), 10);
        assert_eq!(s.limits.effective_api_burst(), 20);
        let s = load_from(
            None,
            env(&[
                ("JMA_POLLER__LIMITS__DATA_REQUESTS", "8"),
                ("JMA_POLLER__LIMITS__API_REQUESTS", "12"),
            ]),
        )
        .unwrap();
        assert_eq!(s.limits.effective_data_burst(), 8);
        assert_eq!(s.limits.effective_api_burst(), 12);
        let shown = s.to_toml();
        assert!(shown.contains("data_burst = 8"), "{shown}");
        assert!(shown.contains("api_burst = 12"), "{shown}");
        // An explicit burst within the budget is kept as given.
        let s = load_from(
            None,
            env(&[
                ("JMA_POLLER__LIMITS__DATA_REQUESTS", "8"),
                ("JMA_POLLER__LIMITS__DATA_BURST", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.limits.effective_data_burst(), 3);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[storage]\ndata_dri = \"/x\"\n").unwrap();
        let msg = err_of(load_from(Some(&file), env(&[])));
        assert!(msg.contains("data_dri"), "{msg}");
        assert!(msg.contains("storage"), "{msg}");
    }

    #[test]
    fn key_is_never_printed() {
        let s = load_from(None, env(&[("JMA_POLLER__API__KEY", "sekrit-key-123")])).unwrap();
        assert_eq!(s.api_key().unwrap().expose(), "sekrit-key-123");
        assert!(!format!("{s:?}").contains("sekrit"));
        assert!(!s.to_toml().contains("sekrit"));
    }

    /// A path keeps SQLite; a postgres URL selects PostgreSQL, its password from the URL or
    /// a file (trimmed), never shown by Debug or check-config; a malformed URL or two passwords
    /// fail at load naming the setting.
    #[test]
    fn database_urls_select_postgres_and_their_password_never_shows() {
        let s = load_from(
            None,
            env(&[("JMA_POLLER__STORAGE__DATABASE", "/x/s.sqlite")]),
        )
        .unwrap();
        assert!(matches!(
            s.storage.database_target().unwrap(),
            DatabaseTarget::Sqlite(p) if p == Path::new("/x/s.sqlite")
        ));
        let url = "postgres://poller:sekrit-pw@db.example:6543/jma?sslmode=require";
        let s = load_from(None, env(&[("JMA_POLLER__STORAGE__DATABASE", url)])).unwrap();
        match s.storage.database_target().unwrap() {
            DatabaseTarget::Postgres(t) => assert_eq!(t.server(), "db.example:6543"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{s:?}").contains("sekrit"), "{s:?}");
        assert!(!s.to_toml().contains("sekrit"));
        assert!(s.to_toml().contains("poller:***@db.example"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let p = file.to_str().unwrap();
        let msg = err_of(load_from(
            None,
            env(&[
                ("JMA_POLLER__STORAGE__DATABASE", url),
                ("JMA_POLLER__STORAGE__DATABASE_PASSWORD_FILE", p),
            ]),
        ));
        assert!(msg.contains("storage.database_password_file"), "{msg}");
        let s = load_from(
            None,
            env(&[
                (
                    "JMA_POLLER__STORAGE__DATABASE",
                    "postgresql://poller@db/jma",
                ),
                ("JMA_POLLER__STORAGE__DATABASE_PASSWORD_FILE", p),
            ]),
        )
        .unwrap();
        let target = s.storage.database_target().unwrap();
        assert!(!format!("{target:?}").contains("from-file"));
        std::fs::write(&file, "\n").unwrap();
        let msg = s.storage.database_target().unwrap_err().to_string();
        assert!(msg.contains("storage.database_password_file"), "{msg}");

        for bad in [
            "postgres://",
            "mysql://u@h/db",
            "postgres://u:pw@h/db?sslmode=maybe",
        ] {
            let msg = err_of(load_from(
                None,
                env(&[("JMA_POLLER__STORAGE__DATABASE", bad)]),
            ));
            assert!(msg.starts_with("storage.database:"), "{bad}: {msg}");
            assert!(!msg.contains(":pw@"), "{bad}: {msg}");
        }
    }

    #[test]
    fn key_file_is_trimmed_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "abc\n").unwrap();
        let p = file.to_str().unwrap();
        let s = load_from(None, env(&[("JMA_POLLER__API__KEY_FILE", p)])).unwrap();
        assert_eq!(s.api_key().unwrap().expose(), "abc");
        let msg = err_of(load_from(
            None,
            env(&[
                ("JMA_POLLER__API__KEY_FILE", p),
                ("JMA_POLLER__API__KEY", "x"),
            ]),
        ));
        assert!(msg.contains("api.key_file"), "{msg}");
        let s = load_from(
            None,
            env(&[("JMA_POLLER__API__KEY_FILE", "/nonexistent/k")]),
        )
        .unwrap();
        assert!(
            s.api_key()
                .unwrap_err()
                .to_string()
                .contains("api.key_file")
        );
    }
}
