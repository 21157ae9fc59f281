//! The optional HTTP listener (`server.listen`): `/healthz` (the process answers), `/readyz`
//! (the database answers and a poll succeeded recently) and `/metrics` (Prometheus text).
//! Off by default; bind it to loopback unless a scraper elsewhere needs it.

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

#[derive(Clone)]
struct Ctx {
    health: Arc<Health>,
    store: Store,
    /// `/readyz` fails when the last successful poll is older than this; None = no poller.
    staleness: Option<Duration>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    store: Store,
    staleness: Option<Duration>,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ctx {
            health,
            store,
            staleness,
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
    if let Some(staleness) = ctx.staleness {
        // Every list source must be covered by the contract and every PuLL stream must work,
        // not just one of them.
        if let Some(reason) = ctx
            .health
            .contract_not_ready()
            .or_else(|| ctx.health.streams_not_ready(staleness))
        {
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

async fn metrics(State(ctx): State<Ctx>) -> Response {
    refresh_waiting(&ctx.store).await;
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
