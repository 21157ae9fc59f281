//! The optional HTTP listener (`server.listen`): `/healthz` (the process answers), `/readyz`
//! (the database answers and a poll succeeded recently), `/metrics` (Prometheus text) and `/`
//! (the status page, [`crate::status_page`]). Off by default; bind it to loopback unless a
//! scraper elsewhere needs it. Everything here only reads.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::model::{HoldReason, now_ms};
use crate::state::Store;
use crate::state::prelude::*;
use crate::storage::Storage;

/// What the freshness gauges and the status page need besides the store.
#[derive(Clone)]
pub struct Monitor {
    /// For the free-space gauges (`storage.min_free` is set on it).
    pub storage: Arc<Storage>,
    /// `monitor.late_factor`.
    pub late_factor: f64,
}

#[derive(Clone)]
struct Ctx {
    health: Arc<Health>,
    store: Store,
    /// `/readyz` fails when the last successful poll is older than this; None = no poller.
    staleness: Option<Duration>,
    monitor: Monitor,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    store: Store,
    staleness: Option<Duration>,
    monitor: Monitor,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ctx {
            health,
            store,
            staleness,
            monitor,
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::error!(event = "server_failed", error = %e, "the health/metrics listener stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    if let Err(e) = ctx.store.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: database: {e}\n"),
        )
            .into_response();
    }
    if let Some(reason) = ctx.health.cluster_not_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response();
    }
    // A standby polls nothing: poll age is judged on the leader.
    if let Some(staleness) = ctx.staleness.filter(|_| ctx.health.leads_any()) {
        // Every list source must be covered by the contract and every PuLL stream must work,
        // not just one of them.
        if let Some(reason) = ctx.health.contract_not_ready().or_else(|| {
            ctx.health
                .leads(crate::cluster::ROLE_JMAFILE)
                .then(|| ctx.health.streams_not_ready(staleness))
                .flatten()
        }) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            )
                .into_response();
        }
        match ctx.health.last_success_ms() {
            None => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no successful poll yet\n",
                )
                    .into_response();
            }
            Some(t) if now_ms() - t > staleness.as_millis() as i64 => {
                let ago = (now_ms() - t) / 1000;
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: last successful poll {ago}s ago (server.ready_staleness is {}s)\n", staleness.as_secs()),
                )
                    .into_response();
            }
            Some(_) => {}
        }
    }
    "ready\n".into_response()
}

/// The status page: freshness, queue, recent failures, landings of the last day. A database
/// that does not answer gives a 503 with the reason, as `/readyz` does.
async fn status_page(State(ctx): State<Ctx>) -> Response {
    match crate::status_page::render(&ctx.store, ctx.monitor.late_factor, now_ms()).await {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("status page: database: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    refresh_waiting(&ctx.store).await;
    refresh_freshness(&ctx.store, &ctx.monitor).await;
    let handle = crate::telemetry::metrics();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// The ids held back before their next request, as gauges read at each scrape (counts per
/// reason and the earliest due time; no per-id labels). Left as they were if the database
/// does not answer.
async fn refresh_waiting(store: &Store) {
    let Ok(waiting) = store.waiting(now_ms()).await else {
        return;
    };
    for reason in [HoldReason::RefetchDelay, HoldReason::SameId] {
        let n = waiting
            .counts
            .iter()
            .find(|c| c.reason == reason)
            .map_or(0, |c| c.items);
        metrics::gauge!(crate::metric::ITEMS_WAITING, "reason" => reason.as_str()).set(n as f64);
    }
    let next = waiting.counts.iter().map(|c| c.next_due_ms).min();
    metrics::gauge!(crate::metric::ITEMS_WAITING_NEXT_DUE)
        .set(next.map_or(0.0, |ms| ms as f64 / 1000.0));
}

/// The freshness gauges per classification (a read of the small `freshness` table), and the
/// free space of the data dir's filesystem beside `storage.min_free`.
async fn refresh_freshness(store: &Store, monitor: &Monitor) {
    if let Ok(rows) = store.freshness().await {
        let list = crate::freshness::summarize(&rows, now_ms(), monitor.late_factor);
        crate::freshness::publish(&list);
    }
    if let Ok(free) = monitor.storage.free_space() {
        metrics::gauge!(crate::metric::FREE_BYTES).set(free as f64);
    }
    metrics::gauge!(crate::metric::MIN_FREE_BYTES).set(monitor.storage.min_free() as f64);
}
