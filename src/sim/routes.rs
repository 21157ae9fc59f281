//! HTTP side of the simulator.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::data::rfc3339;
use super::{AuthSeen, BacklogOrder, DataFault, Inner, ListFault, Request, SimItem, lock};

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v2/jmafile", get(jmafile_list))
        .route("/v1/{id}", get(jmafile_data))
        .route("/v2/archive", get(archive_list))
        .route("/v2/socket", get(socket_list))
        .route("/v1/archive/{id}", get(archive_data))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(http_facts))
        .with_state(inner)
}

/// Set by [`http_facts`] on every request: the HTTP version it arrived in, for the log.
const VERSION_HEADER: &str = "x-sim-http-version";

/// Makes HTTP/2 requests look like HTTP/1.1 ones to the handlers, which read the `Host` header
/// (HTTP/2 carries it as `:authority`, in the URI), and hands them the request's HTTP version
/// through [`VERSION_HEADER`] (any client-sent value is replaced).
async fn http_facts(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let version = format!("{:?}", request.version());
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    let headers = request.headers_mut();
    if !headers.contains_key(header::HOST)
        && let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok())
    {
        headers.insert(header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(&version) {
        headers.insert(VERSION_HEADER, v);
    }
    next.run(request).await
}

fn version_of(headers: &HeaderMap) -> axum::http::Version {
    use axum::http::Version;
    match headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()) {
        Some("HTTP/0.9") => Version::HTTP_09,
        Some("HTTP/1.0") => Version::HTTP_10,
        Some("HTTP/2.0") => Version::HTTP_2,
        Some("HTTP/3.0") => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn response_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn json_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "responseId": response_id(),
        "responseTime": rfc3339(OffsetDateTime::now_utc()),
        "status": "error",
        "error": {"message": message, "code": status},
    });
    (code, axum::Json(body)).into_response()
}

fn text_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}

fn with_retry_after(mut r: Response, secs: Option<u64>) -> Response {
    if let Some(s) = secs
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn parse_query(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn check_auth(inner: &Inner, headers: &HeaderMap, q: &[(String, String)]) -> AuthSeen {
    let key = lock(&inner.config).key.clone();
    let reject = lock(&inner.faults).reject_key;
    let seen = if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(b) = v.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            match decoded.as_deref().and_then(|d| d.split_once(':')) {
                Some((user, "")) if user == key => AuthSeen::Basic,
                _ => AuthSeen::Wrong,
            }
        } else if let Some(t) = v.strip_prefix("Bearer ") {
            if t.trim() == key {
                AuthSeen::Bearer
            } else {
                AuthSeen::Wrong
            }
        } else {
            AuthSeen::Wrong
        }
    } else if let Some(k) = param(q, "key") {
        if k == key {
            AuthSeen::QueryKey
        } else {
            AuthSeen::Wrong
        }
    } else {
        AuthSeen::Missing
    };
    if reject && seen != AuthSeen::Missing {
        AuthSeen::Wrong
    } else {
        seen
    }
}

fn authorized(a: AuthSeen) -> bool {
    matches!(a, AuthSeen::Basic | AuthSeen::Bearer | AuthSeen::QueryKey)
}

fn record(inner: &Inner, mut req: Request, resp: Response) -> Response {
    req.status = resp.status().as_u16();
    req.answered = Instant::now();
    lock(&inner.log).push(req);
    resp
}

fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn not_found(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let req = Request {
        received: Instant::now(),
        answered: Instant::now(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        cursor_kind: None,
        auth: AuthSeen::Missing,
        status: 0,
        id: None,
        host: host_of(&headers),
        version: version_of(&headers),
    };
    let resp = if uri.path().starts_with("/v2/") {
        json_error(404, "Not Found.")
    } else {
        text_error(404, "Not Found.")
    };
    record(&inner, req, resp)
}

// ---- cursor tokens: opaque base64url of "kind(12) serial.issued_ms.epoch" ----

fn make_token(kind: &str, serial: u64, epoch: u64) -> String {
    let issued = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    B64.encode(format!("{kind:<12}{serial}.{issued}.{epoch}"))
}

struct Token {
    kind: String,
    serial: u64,
    issued_ms: i128,
    epoch: u64,
}

fn parse_token(t: &str) -> Option<Token> {
    let raw = String::from_utf8(B64.decode(t.trim_end_matches('=')).ok()?).ok()?;
    if raw.len() < 13 {
        return None;
    }
    let (kind, rest) = raw.split_at(12);
    let mut parts = rest.split('.');
    Some(Token {
        kind: kind.trim().to_owned(),
        serial: parts.next()?.parse().ok()?,
        issued_ms: parts.next()?.parse().ok()?,
        epoch: parts.next()?.parse().ok()?,
    })
    .filter(|t| t.kind == "polling" || t.kind == "next")
}

/// `datetime` bound: with an offset as given; bare values are read as JST (the docs do not
/// say; JST is the reading that hurts a client sending UTC least, and the client must cope).
fn parse_bound(s: &str) -> Option<OffsetDateTime> {
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = crate::api::models::parse_time(s) {
        if s.ends_with('Z') || s.contains('+') || s[10..].contains('-') {
            return Some(t);
        }
        return Some(t.replace_offset(time::macros::offset!(+9)));
    }
    None
}

fn entry_json(item: &SimItem, origin: &str, strings: bool) -> Value {
    if let Some(raw) = &item.raw_entry {
        return raw.clone();
    }
    let mut headers = item.headers.clone();
    if strings {
        for h in &mut headers {
            if let Some(n) = h.get("length").and_then(|l| l.as_u64()) {
                h["length"] = json!(n.to_string());
            }
        }
    }
    let mut entry = json!({
        "serial": item.announced_serial.unwrap_or(item.serial).to_string(),
        "id": item.id,
        "classification": item.classification,
        "headers": headers,
        "receivedTime": rfc3339(item.received),
        "format": item.format,
        "compression": item.compression,
        "url": format!("{}/v1/{}", item.url_origin.as_deref().unwrap_or(origin), item.id),
    });
    if let Some(obj) = entry.as_object_mut() {
        for field in &item.omit_fields {
            obj.remove(field);
        }
    }
    entry
}

/// A list call that passed auth and the budget: its record, query, and cursor token (absent,
/// unreadable, or parsed).
type ListCall = (Request, Vec<(String, String)>, Option<Option<Token>>);

/// The shared front of the list routes: the request record (with the kind of cursor sent),
/// auth, and the list-host budget.
#[allow(clippy::result_large_err)] // Err is the finished response; one per request.
fn list_request(
    inner: &Inner,
    path: &str,
    headers: &HeaderMap,
    raw: &Option<String>,
) -> Result<ListCall, Response> {
    let q = parse_query(raw);
    let token = param(&q, "cursorToken").map(parse_token);
    let req = Request {
        received: Instant::now(),
        answered: Instant::now(),
        path: path.to_owned(),
        query: raw.clone().unwrap_or_default(),
        cursor_kind: token
            .as_ref()
            .and_then(|t| t.as_ref().map(|t| t.kind.clone())),
        auth: check_auth(inner, headers, &q),
        status: 0,
        id: None,
        host: host_of(headers),
        version: version_of(headers),
    };
    if !authorized(req.auth) {
        return Err(record(
            inner,
            req,
            json_error(401, "Authentication required."),
        ));
    }
    let retry_after = lock(&inner.config).retry_after_on_429;
    if let Some(b) = lock(&inner.api_bucket).as_mut()
        && !b.take()
    {
        inner.rejected_429.fetch_add(1, Ordering::Relaxed);
        let r = with_retry_after(text_error(429, "Too Many Requests"), retry_after);
        return Err(record(inner, req, r));
    }
    Ok((req, q, token))
}

/// Answers with an injected list fault, or waits it out (`Delay`) and lets the call go on.
async fn list_fault(
    inner: &Inner,
    req: Request,
    fault: Option<ListFault>,
) -> Result<Request, Response> {
    match fault {
        Some(ListFault::Status(s)) => Err(record(inner, req, json_error(s, "Simulated failure."))),
        Some(ListFault::RetryAfter(s, secs)) => {
            // The WAF's 429 is not the JSON envelope.
            let r = if s == 429 {
                text_error(429, "Too Many Requests")
            } else {
                json_error(s, "Simulated failure.")
            };
            Err(record(inner, req, with_retry_after(r, Some(secs))))
        }
        Some(ListFault::Body(b)) => {
            let r = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                b,
            )
                .into_response();
            Err(record(inner, req, r))
        }
        Some(ListFault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(req)
        }
        None => Ok(req),
    }
}

/// `limit`: 20 by default, 1 to 100.
#[allow(clippy::result_large_err)]
fn parse_limit(q: &[(String, String)]) -> Result<usize, Response> {
    match param(q, "limit") {
        None => Ok(20),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(json_error(
                400,
                "The query parameter `limit` must be 1 to 100.",
            )),
        },
    }
}

/// The 402 message documented on Socket Start (§15: the lists' answer is undocumented).
const NO_CONTRACT: &str = "No contract.";

async fn jmafile_list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let (req, q, parsed_token) = match list_request(&inner, "/v2/jmafile", &headers, &raw) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let config = lock(&inner.config).clone();
    let fault = {
        let mut f = lock(&inner.faults);
        let queued = f.list.pop_front();
        queued.or_else(|| {
            let r = f.random.clone()?;
            let roll = fastrand::f64();
            if roll < r.list_5xx {
                Some(ListFault::Status(503))
            } else if roll < r.list_5xx + r.list_429 {
                Some(ListFault::RetryAfter(429, 1))
            } else {
                if fastrand::f64() < r.expire_tokens {
                    lock(&inner.world).epoch += 1;
                }
                None
            }
        })
    };
    let req = match list_fault(&inner, req, fault).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    if config.no_contract.iter().any(|c| c == "jmafile") {
        return record(&inner, req, json_error(402, NO_CONTRACT));
    }
    let limit = match parse_limit(&q) {
        Ok(n) => n,
        Err(resp) => return record(&inner, req, resp),
    };
    let types: Vec<String> = param(&q, "type")
        .map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if types.len() > 5 {
        return record(&inner, req, json_error(400, "Too many values in `type`."));
    }
    if types.iter().any(|t| config.refused_types.contains(t)) {
        return record(
            &inner,
            req,
            json_error(
                400,
                "You have entered a string that is not defined in `type`.",
            ),
        );
    }
    const CURSOR_REFUSED: &str = "Unexpected data  of search query `cursorToken`.";
    let refusal = config.cursor_refusal.as_deref().unwrap_or(CURSOR_REFUSED);
    let (from, to) = match param(&q, "datetime") {
        Some(r) => {
            let (a, b) = r.split_once('~').unwrap_or((r, ""));
            (parse_bound(a), parse_bound(b))
        }
        None => (None, None),
    };
    let now = OffsetDateTime::now_utc();
    let world = lock(&inner.world);
    let token = match parsed_token {
        None => None,
        Some(None) => {
            drop(world);
            return record(&inner, req, json_error(400, refusal));
        }
        Some(Some(t)) => {
            let expired = config.token_ttl.is_some_and(|ttl| {
                (now.unix_timestamp_nanos() / 1_000_000 - t.issued_ms) > ttl.as_millis() as i128
            });
            if t.epoch < world.epoch || expired {
                drop(world);
                return record(&inner, req, json_error(400, refusal));
            }
            Some(t)
        }
    };
    let retention = time::Duration::try_from(config.retention).unwrap_or(time::Duration::days(31));
    let matches = |i: &&SimItem| {
        i.received >= now - retention
            && match types.len() {
                0 => true,
                1 => i.type_name.starts_with(&types[0]),
                _ => types.contains(&i.type_name),
            }
            && from.is_none_or(|f| i.received >= f)
            && to.is_none_or(|t| i.received < t)
    };
    // The newest *published* serial: an item being built has its serial reserved but is not
    // listed yet, and a cursor past it would skip it. Items are pushed in serial order (adds
    // are serialized), so the last one is the newest.
    let global_max = world.items.last().map_or(0, |i| i.serial);
    // Newest first.
    let mut visible: Vec<&SimItem> = world.items.iter().filter(matches).collect();
    visible.sort_by_key(|i| std::cmp::Reverse(i.serial));
    let (page, next_token, pooling_serial): (Vec<&SimItem>, Option<String>, u64) = match &token {
        None => {
            let more = visible.len() > limit;
            let page: Vec<_> = visible.into_iter().take(limit).collect();
            let next =
                more.then(|| make_token("next", page.last().map_or(0, |i| i.serial), world.epoch));
            (page, next, global_max)
        }
        Some(t) if t.kind == "next" => {
            let older: Vec<_> = visible
                .into_iter()
                .filter(|i| i.serial < t.serial)
                .collect();
            let more = older.len() > limit;
            let page: Vec<_> = older.into_iter().take(limit).collect();
            let next =
                more.then(|| make_token("next", page.last().map_or(0, |i| i.serial), world.epoch));
            (page, next, global_max)
        }
        Some(t) => {
            let newer: Vec<_> = visible
                .iter()
                .copied()
                .filter(|i| i.serial > t.serial)
                .collect();
            if newer.len() <= limit {
                (newer, None, global_max.max(t.serial))
            } else {
                let page: Vec<_> = match config.backlog_order {
                    BacklogOrder::NewestFirst | BacklogOrder::NewestWithoutToken => {
                        newer.into_iter().take(limit).collect()
                    }
                    BacklogOrder::OldestFirst => {
                        let n = newer.len();
                        newer.into_iter().skip(n - limit).collect()
                    }
                };
                let lowest = page.last().map_or(0, |i| i.serial);
                let pooling = match config.backlog_order {
                    BacklogOrder::NewestFirst | BacklogOrder::NewestWithoutToken => global_max,
                    BacklogOrder::OldestFirst => page.first().map_or(t.serial, |i| i.serial),
                };
                let next = (config.backlog_order != BacklogOrder::NewestWithoutToken)
                    .then(|| make_token("next", lowest, world.epoch));
                (page, next, pooling)
            }
        }
    };
    let origin = inner.origin();
    let items: Vec<Value> = page
        .iter()
        .map(|i| entry_json(i, &origin, config.numbers_as_strings))
        .collect();
    let interval: Value = if config.numbers_as_strings {
        json!(config.pooling_interval_ms.to_string())
    } else {
        json!(config.pooling_interval_ms)
    };
    let mut body = json!({
        "responseId": response_id(),
        "responseTime": rfc3339(now),
        "status": "ok",
        "items": items,
        "nextPooling": make_token("polling", pooling_serial, world.epoch),
        "nextPoolingInterval": interval,
    });
    if let Some(t) = next_token {
        body["nextToken"] = json!(t);
    }
    drop(world);
    record(&inner, req, axum::Json(body).into_response())
}

/// What a data route found for an id.
struct Found {
    payload: Bytes,
    /// Dmdata-* and other headers to send with it.
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
    /// Older than the viewable window: 403.
    expired: bool,
    /// JSON headers block for `?headers=true` (jmafile only).
    headers_json: Option<Vec<u8>>,
}

/// The shared front of both data routes: request record, auth and the data-host budget.
#[allow(clippy::result_large_err)] // Err is the finished response; one per request.
fn data_request(
    inner: &Inner,
    path: String,
    id: &str,
    headers: &HeaderMap,
    raw: &Option<String>,
) -> Result<(Request, Vec<(String, String)>), Response> {
    let q = parse_query(raw);
    let req = Request {
        received: Instant::now(),
        answered: Instant::now(),
        path,
        query: raw.clone().unwrap_or_default(),
        cursor_kind: None,
        auth: check_auth(inner, headers, &q),
        status: 0,
        id: Some(id.to_owned()),
        host: host_of(headers),
        version: version_of(headers),
    };
    if !authorized(req.auth) {
        return Err(record(
            inner,
            req,
            text_error(401, "Authentication required."),
        ));
    }
    if let Some(blocked) = same_id_block(inner, id) {
        return Err(record(inner, req, blocked));
    }
    let retry_after = lock(&inner.config).retry_after_on_429;
    if let Some(b) = lock(&inner.data_bucket).as_mut()
        && !b.take()
    {
        inner.rejected_429.fetch_add(1, Ordering::Relaxed);
        let r = with_retry_after(text_error(429, "Too Many Requests"), retry_after);
        return Err(record(inner, req, r));
    }
    Ok((req, q))
}

/// The live data hosts' answer to an id fetched again soon: a block of that id alone, before
/// (and without touching) the host's request budget. A request outside any block is noted as
/// the id's latest; once a block is over, the id starts afresh.
fn same_id_block(inner: &Inner, id: &str) -> Option<Response> {
    let (window, block) = {
        let c = lock(&inner.config);
        (c.repeat_fetch_window, c.repeat_fetch_block)
    };
    let now = Instant::now();
    let mut w = lock(&inner.world);
    let blocked = w.blocked_until.get(id).is_some_and(|until| now < *until)
        || match (window, w.fetched_at.get(id)) {
            (Some(window), Some(last)) if now.duration_since(*last) < window => {
                w.blocked_until.insert(id.to_owned(), now + block);
                w.fetched_at.remove(id);
                true
            }
            _ => false,
        };
    if blocked {
        return Some(text_error(429, "Don't try to get the same data."));
    }
    w.fetched_at.insert(id.to_owned(), now);
    None
}

async fn jmafile_data(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let (req, q) = match data_request(&inner, format!("/v1/{id}"), &id, &headers, &raw) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let item = lock(&inner.world)
        .items
        .iter()
        .find(|i| i.id == id)
        .cloned();
    let Some(item) = item else {
        return record(&inner, req, text_error(404, "Not Found."));
    };
    let retention = lock(&inner.config).retention;
    let mut meta = vec![
        ("dmdata-classification", item.classification.clone()),
        ("dmdata-filename", item.filename().to_owned()),
        ("dmdata-format", item.format.clone()),
    ];
    if let Some(c) = item.compression {
        meta.push(("dmdata-compression", c.to_owned()));
    }
    let found = Found {
        payload: item.body.clone(),
        headers: meta,
        content_type: "application/octet-stream",
        expired: item.received
            < OffsetDateTime::now_utc()
                - time::Duration::try_from(retention).unwrap_or(time::Duration::days(31)),
        headers_json: Some(serde_json::to_vec(&item.headers).unwrap_or_default()),
    };
    serve_body(&inner, req, &q, &id, found)
}

async fn archive_data(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let (req, q) = match data_request(&inner, format!("/v1/archive/{id}"), &id, &headers, &raw) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let archive = lock(&inner.world)
        .archives
        .iter()
        .find(|a| a.id == id)
        .cloned();
    let Some(archive) = archive else {
        return record(&inner, req, text_error(404, "Not Found."));
    };
    let found = Found {
        payload: archive.body.clone(),
        headers: vec![("dmdata-classification", archive.classification.clone())],
        content_type: "application/gzip",
        expired: false,
        headers_json: None,
    };
    serve_body(&inner, req, &q, &id, found)
}

/// Serves a body with whatever fault is queued or drawn for it.
fn serve_body(
    inner: &Inner,
    req: Request,
    q: &[(String, String)],
    id: &str,
    found: Found,
) -> Response {
    let compressed = found.content_type == "application/gzip"
        || found
            .headers
            .iter()
            .any(|(k, _)| *k == "dmdata-compression");
    if found.expired {
        return record(
            inner,
            req,
            text_error(403, "Out of the period you may view."),
        );
    }
    let len = found.payload.len();
    let fault = {
        let mut f = lock(&inner.faults);
        let own = f.data_for.get_mut(id).and_then(|v| v.pop_front());
        own.or_else(|| f.data.pop_front()).or_else(|| {
            let r = f.random.clone()?;
            let roll = fastrand::f64();
            let mut edge = r.data_5xx;
            if roll < edge {
                return Some(DataFault::Status(503));
            }
            edge += r.data_429;
            if roll < edge {
                return Some(DataFault::RetryAfter(429, 1));
            }
            edge += r.truncate;
            if roll < edge {
                return Some(DataFault::Truncate(len / 2));
            }
            // Corruption is a fault of compressed bodies ("corrupt gzip"): their CRC can tell.
            // A flipped byte in an uncompressed body is undetectable by any client (no checksum
            // is documented; on the real API TLS rules it out in transit).
            edge += r.corrupt;
            if roll < edge && compressed {
                return Some(DataFault::Corrupt);
            }
            edge += r.stall;
            if roll < edge {
                return Some(DataFault::Stall(len / 3, Duration::from_secs(3600)));
            }
            None
        })
    };
    match &fault {
        Some(DataFault::Status(s)) => {
            return record(inner, req, text_error(*s, "Simulated failure."));
        }
        Some(DataFault::RetryAfter(s, secs)) => {
            return record(
                inner,
                req,
                with_retry_after(text_error(*s, "Simulated failure."), Some(*secs)),
            );
        }
        _ => {}
    }
    let mut payload = found.payload;
    let mut extra_headers = found.headers;
    if let (Some("true"), Some(json)) = (param(q, "headers"), found.headers_json) {
        let mut prefix = json;
        prefix.push(b'\n');
        extra_headers.push(("dmdata-headers-length", prefix.len().to_string()));
        prefix.extend_from_slice(&payload);
        payload = Bytes::from(prefix);
    }
    let body = match fault {
        Some(DataFault::Corrupt) => {
            let mut v = payload.to_vec();
            if !v.is_empty() {
                let at = v.len().saturating_sub(6).min(v.len() - 1);
                v[at] ^= 0x5a;
            }
            Body::from(v)
        }
        Some(DataFault::Truncate(n)) => {
            let head = payload.slice(..n.min(payload.len()));
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(head),
                Err(std::io::Error::other("simulated connection drop")),
            ];
            Body::from_stream(futures_util::stream::iter(parts))
        }
        Some(DataFault::Stall(n, d)) => {
            let head = payload.slice(..n.min(payload.len()));
            let tail = payload.slice(n.min(payload.len())..);
            let s = futures_util::stream::unfold(0u8, move |step| {
                let (head, tail) = (head.clone(), tail.clone());
                async move {
                    match step {
                        0 => Some((Ok::<Bytes, std::io::Error>(head), 1)),
                        1 => {
                            tokio::time::sleep(d).await;
                            Some((Ok(tail), 2))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(s)
        }
        _ => Body::from(payload),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(found.content_type),
    );
    for (k, v) in extra_headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    record(inner, req, resp)
}

/// `GET /v2/archive`: newest first (date, then serial); `classification` (comma list),
/// `datetime` date range (each bound inclusive or exclusive as configured: the docs do not
/// say), nextToken paging.
async fn archive_list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let (req, q, parsed) = match list_request(&inner, "/v2/archive", &headers, &raw) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let config = lock(&inner.config).clone();
    let fault = lock(&inner.faults).archive_list.pop_front();
    let req = match list_fault(&inner, req, fault).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    let limit = match parse_limit(&q) {
        Ok(n) => n,
        Err(resp) => return record(&inner, req, resp),
    };
    let offset = match parsed {
        None => 0usize,
        Some(Some(t)) if t.kind == "next" => t.serial as usize,
        _ => {
            return record(
                &inner,
                req,
                json_error(400, "Unexpected data  of search query `cursorToken`."),
            );
        }
    };
    let classes: Vec<String> = param(&q, "classification")
        .map(|c| {
            c.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let refused = |c: &String| config.no_contract.contains(c);
    if config.no_contract.iter().any(|c| c == "archive") || classes.iter().any(refused) {
        return record(&inner, req, json_error(402, NO_CONTRACT));
    }
    let (from, to) = match param(&q, "datetime") {
        Some(r) => {
            let (a, b) = r.split_once('~').unwrap_or((r, ""));
            (
                crate::api::models::parse_date(a).ok(),
                crate::api::models::parse_date(b).ok(),
            )
        }
        None => (None, None),
    };
    let world = lock(&inner.world);
    let mut matching: Vec<&super::SimArchive> = world
        .archives
        .iter()
        .filter(|a| classes.is_empty() || classes.contains(&a.classification))
        .filter(|a| !refused(&a.classification))
        .filter(|a| from.is_none_or(|f| config.archive_start.admits(a.date, f, true)))
        .filter(|a| to.is_none_or(|t| config.archive_end.admits(a.date, t, false)))
        .collect();
    matching.sort_by(|a, b| b.date.cmp(&a.date).then(b.serial.cmp(&a.serial)));
    // The runaway the provider was seen doing: the cursor is ignored, nextToken never ends.
    let (start, more) = if config.archive_endless {
        (0, true)
    } else {
        (offset.min(matching.len()), matching.len() > offset + limit)
    };
    let origin = inner.origin();
    let items: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|a| {
            let size: Value = if config.numbers_as_strings {
                json!(a.file_size.to_string())
            } else {
                json!(a.file_size)
            };
            json!({
                "serial": a.serial.to_string(),
                "id": a.id,
                "classification": a.classification,
                "date": a.date_str(),
                "dataCount": a.data_count,
                "fileSize": size,
                "url": format!("{origin}/v1/archive/{}", a.id),
            })
        })
        .collect();
    let mut body = json!({
        "responseId": response_id(),
        "responseTime": rfc3339(OffsetDateTime::now_utc()),
        "status": "ok",
        "items": items,
    });
    if more {
        body["nextToken"] = json!(make_token("next", (offset + limit) as u64, world.epoch));
    }
    drop(world);
    record(&inner, req, axum::Json(body).into_response())
}

/// `GET /v2/socket`: the account's WebSocket sessions, newest first; `id`, `status`,
/// `cursorToken`, `limit`.
async fn socket_list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let (req, q, parsed) = match list_request(&inner, "/v2/socket", &headers, &raw) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let limit = match parse_limit(&q) {
        Ok(n) => n,
        Err(resp) => return record(&inner, req, resp),
    };
    let offset = match parsed {
        None => 0usize,
        Some(Some(t)) if t.kind == "next" => t.serial as usize,
        _ => {
            return record(
                &inner,
                req,
                json_error(400, "Unexpected data  of search query `cursorToken`."),
            );
        }
    };
    let world = lock(&inner.world);
    let mut matching: Vec<&Value> = world
        .sockets
        .iter()
        .rev()
        .filter(|s| match param(&q, "id") {
            Some(id) => s["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id),
            None => param(&q, "status").is_none_or(|st| s["status"] == st),
        })
        .collect();
    let more = matching.len() > offset + limit;
    let items: Vec<Value> = matching
        .drain(..)
        .skip(offset)
        .take(limit)
        .cloned()
        .collect();
    let mut body = json!({
        "responseId": response_id(),
        "responseTime": rfc3339(OffsetDateTime::now_utc()),
        "status": "ok",
        "items": items,
    });
    if more {
        body["nextToken"] = json!(make_token("next", (offset + limit) as u64, world.epoch));
    }
    drop(world);
    record(&inner, req, axum::Json(body).into_response())
}
