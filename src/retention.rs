//! `storage.retention`: removes files (and then their rows) once items are older than the
//! retention period, by `receivedTime` (an archive: its date). Only finished items (done or
//! failed) are touched: nothing queued or in flight is ever removed.
//!
//! Order matters for crashes: the file goes first, then the row. A crash in between leaves a
//! row whose file is gone, which the next pass removes. The pollers never list anything older
//! than the retention period again, so removed items are not fetched again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::model::now_ms;
use crate::sink::Sink;
use crate::state::prelude::*;
use crate::state::{Store, StoreError};

const BATCH: i64 = 500;

/// One pass: removes everything older than `retention`. Returns (items, bytes).
pub async fn prune_once(
    store: &Store,
    sink: &Arc<dyn Sink>,
    retention: Duration,
) -> Result<(u64, u64), StoreError> {
    let cutoff = now_ms() - retention.as_millis() as i64;
    let (mut items, mut bytes) = (0, 0);
    loop {
        let batch = store.expired(cutoff, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        let sink = sink.clone();
        let (removed, freed) = tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            let mut freed = 0;
            for (seq, path) in batch {
                match path.as_deref().map(|rel| sink.remove(rel)) {
                    None => removed.push(seq),
                    Some(Ok(b)) => {
                        freed += b;
                        removed.push(seq);
                    }
                    Some(Err(e)) => {
                        error!(event = "retention_failed", path = ?path, error = %e, "cannot remove an expired file; keeping its row and trying again next pass");
                    }
                }
            }
            (removed, freed)
        })
        .await
        .unwrap_or_default();
        if removed.is_empty() {
            break;
        }
        items += store.delete_items(&removed).await?;
        bytes += freed;
        metrics::counter!(crate::metric::RETENTION_REMOVED).increment(removed.len() as u64);
    }
    Ok((items, bytes))
}

/// Runs a pass at start and then every `min(retention / 24, 1h)` until `cancel`.
pub async fn run(
    store: Store,
    sink: Arc<dyn Sink>,
    retention: Duration,
    cancel: CancellationToken,
) {
    let every = (retention / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        match prune_once(&store, &sink, retention).await {
            Ok((0, _)) => {}
            Ok((items, bytes)) => info!(
                event = "retention",
                items,
                bytes,
                "removed {items} item(s) older than storage.retention ({})",
                humantime::format_duration(retention)
            ),
            Err(e) => {
                error!(event = "retention_failed", error = %e, "retention pass failed; trying again later")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
