//! `state copy`: one node's whole state into another database (a single SQLite node into a
//! PostgreSQL cluster, or back), with the daemon stopped. The SQL is in `crate::state::copy`.

use std::path::PathBuf;

use super::{Failure, load};
use crate::model::now_ms;
use crate::state::copy::{CopyError, copy_state};
use crate::state::prelude::*;
use crate::state::{DatabaseTarget, Store};
use crate::storage::Storage;

/// `jma-poller state copy --to <database> [--from <database>]`.
pub(super) async fn command(
    config: &Option<PathBuf>,
    to: String,
    from: Option<String>,
) -> Result<(), Failure> {
    let settings = load(config)?;
    let storage = &settings.storage;
    let source = match &from {
        Some(text) => storage.target_named("--from", text),
        None => storage.database_target(),
    }
    .map_err(|e| Failure::from((2, e)))?;
    let target = storage
        .target_named("--to", &to)
        .map_err(|e| Failure::from((2, e)))?;
    ensure_source_stopped(&source, &storage.data_dir)?;
    if let (Some(a), Some(b)) = (source.sqlite_path(), target.sqlite_path())
        && a == b
    {
        return Err(Failure::from((
            2,
            format!("--to {}: that is the source itself", b.display()),
        )));
    }
    let from_store = Store::open(&source)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    ensure_no_live_node(&from_store, &source).await?;
    let to_store = Store::open(&target)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    eprintln!("copying {} into {}", source.shown(), target.shown());
    let result = copy_state(&from_store, &to_store, &target.shown(), |n| {
        eprintln!("copied {n} items so far")
    })
    .await;
    from_store.close().await;
    let integrity = match &result {
        Ok(_) => Some(to_store.integrity_check().await),
        Err(_) => None,
    };
    to_store.close().await;
    let report = result.map_err(|e| match e {
        CopyError::NotEmpty { .. } => Failure::from((2, e)),
        CopyError::Store(_) => {
            Failure::from((1, format!("{e}; nothing was written to the target")))
        }
    })?;
    match integrity {
        Some(Ok(ok)) if ok == "ok" => {}
        Some(Ok(drift)) => {
            return Err(Failure::from((
                1,
                format!("copied, but the target's integrity check says: {drift}"),
            )));
        }
        Some(Err(e)) => return Err(Failure::from((1, e))),
        None => {}
    }
    println!("{}; integrity ok", report.summary());
    Ok(())
}

/// A SQLite source must not be in use: its daemon holds the data dir's `.lock` (the
/// configured data dir, and the folder of a `--from` file, where a daemon would keep it).
fn ensure_source_stopped(
    source: &DatabaseTarget,
    data_dir: &std::path::Path,
) -> Result<(), Failure> {
    let Some(path) = source.sqlite_path() else {
        return Ok(());
    };
    if !path.is_file() {
        return Err(Failure::from((
            1,
            format!("no database at {}", path.display()),
        )));
    }
    let mut dirs = vec![data_dir.to_owned()];
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        dirs.push(parent.to_owned());
    }
    for dir in dirs {
        Storage::ensure_unlocked(&dir).map_err(|e| {
            Failure::from((
                2,
                format!("{e}; state copy needs the source's daemon stopped"),
            ))
        })?;
    }
    Ok(())
}

/// No node may still be registered live on the source (a cluster's nodes, or a daemon that
/// was killed moments ago and whose registration has not run out yet).
async fn ensure_no_live_node(store: &Store, source: &DatabaseTarget) -> Result<(), Failure> {
    let now = now_ms();
    let nodes = store.nodes().await.map_err(|e| Failure::from((1, e)))?;
    if let Some(live) = nodes.iter().find(|n| n.until_ms > now) {
        return Err(Failure::from((
            2,
            format!(
                "{}: node {} (pid {}) is registered and live for {} more second(s); stop every daemon on the source before copying (a killed one's registration runs out by itself)",
                source.shown(),
                live.node,
                live.pid,
                (live.until_ms - now + 999) / 1000
            ),
        )));
    }
    Ok(())
}
