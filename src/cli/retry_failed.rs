//! `retry-failed`: failed items queued again with fresh attempts.

use std::path::PathBuf;

use super::{Failure, load};
use crate::state::Store;
use crate::state::prelude::*;

/// `jma-poller retry-failed`.
pub(super) async fn retry_failed(
    config: &Option<PathBuf>,
    source: Option<String>,
    classification: Option<String>,
) -> Result<(), Failure> {
    let settings = load(config)?;
    let source = match source.as_deref() {
        None => None,
        Some(s) => Some(crate::model::Source::parse(s).ok_or_else(|| {
            Failure::from((2, format!("--source {s:?}: use jmafile or archive")))
        })?),
    };
    let target = settings
        .storage
        .database_target()
        .map_err(|e| Failure::from((2, e)))?;
    if let Some(path) = target.sqlite_path()
        && !path.exists()
    {
        return Err(Failure::from((
            1,
            format!("no database at {}", path.display()),
        )));
    }
    let store = Store::open(&target)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    let (queued, left) = store
        .retry_failed(source, classification.as_deref())
        .await
        .map_err(|e| Failure::from((1, e)))?;
    store.close().await;
    println!("{queued} failed item(s) queued again");
    if left > 0 {
        println!(
            "{left} item(s) stay failed: they were refused when listed (unsafe name, untrusted host, malformed entry) and cannot be fetched"
        );
    }
    Ok(())
}
