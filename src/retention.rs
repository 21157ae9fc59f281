//! `storage.retention`: removes files (and then their rows) once items are older than the
//! retention period, by `receivedTime` (an archive: its date). Only finished items (done or
//! failed) are touched: nothing queued or in flight is ever removed.
//!
//! Order matters for crashes: the file goes first, then the row. A crash in between leaves a
//! row whose file is gone, which the next pass removes. The pollers never list anything older
//! than the retention period again, so removed items are not fetched again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::model::now_ms;
use crate::state::prelude::*;
use crate::state::{Store, StoreError};
use crate::storage::Storage;

const BATCH: i64 = 500;

/// Removes one item's file or folder and then any folders left empty above it (not the data
/// dir itself). Returns the bytes freed.
fn remove(storage: &Storage, rel: &str) -> std::io::Result<u64> {
    let path = storage.abs(rel);
    let bytes = crate::storage::size_on_disk(&path).unwrap_or(0);
    let result = if path.is_dir() {
        std::fs::remove_dir_all(&path)
    } else {
        std::fs::remove_file(&path)
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut dir: Option<&Path> = path.parent();
    while let Some(d) = dir {
        if d == storage.data_dir() || !d.starts_with(storage.data_dir()) {
            break;
        }
        // Fails (harmlessly) as soon as a folder is not empty.
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(bytes)
}

/// One pass: removes everything older than `retention`. Returns (items, bytes).
pub async fn prune_once(
    store: &Store,
    storage: &Arc<Storage>,
    retention: Duration,
) -> Result<(u64, u64), StoreError> {
    let cutoff = now_ms() - retention.as_millis() as i64;
    let (mut items, mut bytes) = (0, 0);
    loop {
        let batch = store.expired(cutoff, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        let storage = storage.clone();
        let (removed, freed) = tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            let mut freed = 0;
            for (seq, path) in batch {
                match path.as_deref().map(|rel| remove(&storage, rel)) {
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
    storage: Arc<Storage>,
    retention: Duration,
    cancel: CancellationToken,
) {
    let every = (retention / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        match prune_once(&store, &storage, retention).await {
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
