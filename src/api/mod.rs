//! The dmdata.jp client: HTTP Basic auth with the key as user name, typed tolerant models, a
//! typed error that says whether to retry, and the two request budgets (list calls and body
//! downloads are counted separately, even when they share a host).
//!
//! The key is attached only to requests for trusted hosts ([`trust`]); redirects are followed
//! only between trusted hosts; nothing here logs a header or a URL with credentials.
//!
//! TLS: rustls (ring) with the system's CA store or `SSL_CERT_FILE`, plus `api.ca_file`
//! ([`tls`]); HTTP/2 or HTTP/1.1 by ALPN; `HTTPS_PROXY`/`NO_PROXY` from the environment
//! (reqwest reads them when the client is built).

pub mod budget;
pub mod models;
pub mod tls;
pub mod trust;

use std::time::Duration;

use reqwest::StatusCode;
use url::Url;

use crate::config::{ConfigError, Secret, Settings};
use budget::{Budget, Permit};
use models::{ErrorEnvelope, ListPage};
use trust::TrustedHosts;

/// Why an API call failed, with enough context to log and to decide what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("{endpoint}: HTTP {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint}: the cursor token was refused (HTTP 400: {message})")]
    InvalidCursor { endpoint: String, message: String },
    #[error("{endpoint}: {}", chain(.source))]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{endpoint}: malformed response: {detail}")]
    Malformed { endpoint: String, detail: String },
    #[error("untrusted host {host}: not in api.trusted_hosts, so it is never sent the key")]
    UntrustedHost { host: String },
    #[error("{endpoint}: the TLS certificate of {host} was refused ({reason}); {hint}")]
    Certificate {
        endpoint: String,
        host: String,
        reason: String,
        hint: &'static str,
    },
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A setting (or `SSL_CERT_FILE`) is unusable: exit 2, like any configuration error.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// "outer: inner: innermost", without the URL reqwest would otherwise print.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl ApiError {
    /// Worth retrying later: 5xx, 408, 425, 429, timeouts, broken connections, garbled answers.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => {
                matches!(status, 408 | 425 | 429) || (500..600).contains(status)
            }
            ApiError::Transport { .. } | ApiError::Malformed { .. } => true,
            ApiError::InvalidCursor { .. }
            | ApiError::UntrustedHost { .. }
            | ApiError::Certificate { .. } => false,
        }
    }

    /// The server's TLS certificate was refused: a matter for the operator (`api.ca_file`,
    /// `SSL_CERT_FILE`, the clock), not for retrying soon.
    pub fn is_certificate(&self) -> bool {
        matches!(self, ApiError::Certificate { .. })
    }

    /// The key was refused (401) or lacks permission for this API (403 on the JSON host).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// HTTP 402 (`No contract.`): the account's contract does not cover what was asked for.
    /// Retrying soon cannot help; the contract may be added later.
    pub fn is_no_contract(&self) -> bool {
        matches!(self, ApiError::Status { status: 402, .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A data host's block of one id: HTTP 429 whose plain-text body says "same data" (the
    /// live text is `Don't try to get the same data.`). It is about that id alone, not the
    /// request budget: other ids may go on while this one waits.
    pub fn is_same_id_block(&self) -> bool {
        matches!(self, ApiError::Status { status: 429, message, .. } if says_same_data(message))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Secret,
    trusted: TrustedHosts,
    api_budget: Budget,
    data_budget: Budget,
    list_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Longest honoured `Retry-After` before the budget is paused; beyond this we retry anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Client {
    /// Reads `api.ca_file` and checks `SSL_CERT_FILE` (a bad one is a [`ClientError::Config`]).
    pub fn new(settings: &Settings, key: Secret) -> Result<Client, ClientError> {
        // reqwest is built without a bundled crypto provider; ring is installed once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let trusted = TrustedHosts::new(&settings.api.base_url, &settings.api.trusted_hosts)
            .map_err(|m| ConfigError::invalid("api.trusted_hosts", m))?;
        tls::check_ssl_cert_file()?;
        let extra_roots = tls::ca_file_roots(settings)?
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid("api.ca_file", chain(&e)))?;
        let redirect_trust = trusted.clone();
        let http = reqwest::Client::builder()
            .tls_certs_merge(extra_roots)
            .user_agent(concat!("jma-poller/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(settings.download.read_timeout)
            // Below common server keep-alives, so a pooled socket is never reused after the
            // server closed it.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_keepalive(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if redirect_trust.allows(attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.error("redirect to a host outside api.trusted_hosts refused")
                }
            }))
            .build()
            .map_err(|e| ClientError::Build(build_failure(&e)))?;
        let l = &settings.limits;
        Ok(Client {
            http,
            base: settings.api.base_url.clone(),
            key,
            trusted,
            api_budget: Budget::new("api", l.api_requests, l.api_window, l.effective_api_burst()),
            data_budget: Budget::new(
                "data",
                l.data_requests,
                l.data_window,
                l.effective_data_burst(),
            ),
            list_timeout: settings.api.timeout,
        })
    }

    pub fn data_budget(&self) -> &Budget {
        &self.data_budget
    }

    pub fn api_budget(&self) -> &Budget {
        &self.api_budget
    }

    pub fn list_timeout(&self) -> Duration {
        self.list_timeout
    }

    pub fn trusted(&self) -> &TrustedHosts {
        &self.trusted
    }

    /// One list call, e.g. `GET /v2/jmafile?type=..&cursorToken=..`, through the api budget.
    pub async fn list(&self, path: &str, query: &[(&str, String)]) -> Result<ListPage, ApiError> {
        self.list_after(path, query, std::future::ready(())).await
    }

    /// Like [`Client::list`], sent once `gate` (a shared pacing) lets it through, after the
    /// budget granted it: the pacing is the last wait before the request, so time spent
    /// booking the budget cannot bunch paced calls together.
    pub async fn list_after(
        &self,
        path: &str,
        query: &[(&str, String)],
        gate: impl std::future::Future<Output = ()>,
    ) -> Result<ListPage, ApiError> {
        let endpoint = path.to_owned();
        let url = self.base.join(path).map_err(|e| ApiError::Malformed {
            endpoint: endpoint.clone(),
            detail: format!("bad path: {e}"),
        })?;
        let permit = self.api_budget.acquire().await;
        gate.await;
        let request = self
            .http
            .get(url)
            .query(query)
            .basic_auth(self.key.expose(), Some(""))
            .timeout(self.list_timeout);
        permit.sent();
        let response = request
            .send()
            .await
            .map_err(|e| send_failed(&endpoint, &self.base, e))?;
        let status = response.status();
        if !status.is_success() {
            let sent_cursor = query.iter().any(|(k, _)| *k == "cursorToken");
            return Err(status_error(&endpoint, response, sent_cursor, &self.api_budget).await);
        }
        let body = response.bytes().await.map_err(|e| ApiError::Transport {
            endpoint: endpoint.clone(),
            source: e.without_url(),
        })?;
        serde_json::from_slice::<ListPage>(&body).map_err(|e| ApiError::Malformed {
            endpoint,
            detail: format!("{e} (body starts {:?})", snippet(&body)),
        })
    }

    /// Starts a body download. The caller holds a data-budget permit; it is spent here.
    pub async fn get_data(
        &self,
        url: &Url,
        permit: Permit<'_>,
    ) -> Result<reqwest::Response, ApiError> {
        if !self.trusted.allows(url) {
            return Err(ApiError::UntrustedHost {
                host: host_port(url),
            });
        }
        let endpoint = url.path().to_owned();
        let request = self
            .http
            .get(url.clone())
            .basic_auth(self.key.expose(), Some(""));
        permit.sent();
        let response = request
            .send()
            .await
            .map_err(|e| send_failed(&endpoint, url, e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(status_error(&endpoint, response, false, &self.data_budget).await)
        }
    }
}

/// `host` or `host:port` of a URL, for messages.
fn host_port(url: &Url) -> String {
    url.host_str()
        .map(|h| match url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        })
        .unwrap_or_default()
}

/// A request that got no response: a refused certificate says which host and what to set;
/// anything else is a transport error (retried).
fn send_failed(endpoint: &str, url: &Url, e: reqwest::Error) -> ApiError {
    match tls::certificate_problem(&e) {
        Some((reason, hint)) => ApiError::Certificate {
            endpoint: endpoint.to_owned(),
            host: host_port(url),
            reason,
            hint,
        },
        None => ApiError::Transport {
            endpoint: endpoint.to_owned(),
            source: e.without_url(),
        },
    }
}

/// Why the client could not be built; a TLS setup failure (typically no CA certificate found
/// at all, e.g. a minimal container without `ca-certificates`) says where roots come from.
fn build_failure(e: &reqwest::Error) -> String {
    let mut text = chain(e);
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            text.push_str(
                " (CA certificates come from the system's store, or SSL_CERT_FILE when set, plus \
                 api.ca_file: install the ca-certificates package or set one of those)",
            );
            break;
        }
        cur = err.source();
    }
    text
}

/// The documented phrase of a per-id block, matched case-insensitively.
fn says_same_data(message: &str) -> bool {
    message.to_ascii_lowercase().contains("same data")
}

/// Turns a non-2xx response into an [`ApiError`]; a 429 also pauses `budget` for Retry-After
/// (or 30 s), since the provider's WAF counts per host and client, unless its body says the
/// block is about one id ([`ApiError::is_same_id_block`]).
async fn status_error(
    endpoint: &str,
    response: reqwest::Response,
    sent_cursor: bool,
    budget: &Budget,
) -> ApiError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::backoff::parse_retry_after);
    // Error bodies are the JSON envelope on api.dmdata.jp and plain text on data hosts;
    // read at most a few KiB of either.
    let body = read_limited(response, 4096).await;
    let message = serde_json::from_slice::<ErrorEnvelope>(&body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| snippet(&body));
    if status == StatusCode::TOO_MANY_REQUESTS {
        metrics::counter!(crate::metric::HTTP_429, "budget" => budget.name()).increment(1);
        if !says_same_data(&message) {
            let pause = retry_after
                .unwrap_or(Duration::from_secs(30))
                .min(MAX_RETRY_AFTER);
            budget.pause_until(tokio::time::Instant::now() + pause);
        }
    }
    if status == StatusCode::BAD_REQUEST
        && sent_cursor
        && message.to_ascii_lowercase().contains("cursor")
    {
        return ApiError::InvalidCursor {
            endpoint: endpoint.to_owned(),
            message,
        };
    }
    ApiError::Status {
        endpoint: endpoint.to_owned(),
        status: status.as_u16(),
        message: if message.is_empty() {
            status.canonical_reason().unwrap_or("").to_owned()
        } else {
            message
        },
        retry_after,
    }
}

async fn read_limited(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]),
            _ => break,
        }
    }
    out
}

/// The first 200 characters of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    let mut s: String = text.trim().chars().take(200).collect();
    if s.len() < text.trim().len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> ApiError {
        ApiError::Status {
            endpoint: "/v1/x".into(),
            status: code,
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn a_per_id_block_is_told_apart_from_other_429s_by_its_body() {
        assert!(status(429, "Don't try to get the same data.").is_same_id_block());
        assert!(status(429, "DON'T TRY TO GET THE SAME DATA").is_same_id_block());
        assert!(!status(429, "Too Many Requests").is_same_id_block());
        assert!(!status(429, "").is_same_id_block());
        assert!(!status(503, "same data").is_same_id_block());
    }
}
