//! `backfill`: one classification's daily archives for a date range.

use std::io::IsTerminal;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{Failure, load, stop_on_signals};

/// `jma-poller backfill`.
pub(super) async fn backfill(
    config: &Option<PathBuf>,
    classification: String,
    from: Option<time::Date>,
    to: Option<time::Date>,
) -> Result<(), Failure> {
    let mut settings = load(config)?;
    if std::io::stderr().is_terminal() && std::env::var_os("RUST_LOG").is_none() {
        // The progress bar reports each archive; keep only problems in the log.
        settings.log.level = "warn".into();
    }
    crate::telemetry::init(&settings.log);
    if crate::storage::safe_component(&classification).is_err() {
        return Err(Failure::from((
            2,
            format!("--classification {classification:?} is not a classification name"),
        )));
    }
    let to = to.unwrap_or_else(|| crate::model::time::jst_today() - time::Duration::days(1));
    let from = from.unwrap_or(to - time::Duration::days(6));
    if from > to {
        return Err(Failure::from((2, "--from is after --to")));
    }
    let token = CancellationToken::new();
    stop_on_signals(token.clone());
    let r = crate::backfill::run(settings, classification.clone(), from, to, token)
        .await
        .map_err(|e| Failure {
            code: e.exit_code(),
            message: e.to_string(),
        })?;
    let range = format!(
        "{classification} {}..{}",
        crate::model::time::fmt_date(from),
        crate::model::time::fmt_date(to)
    );
    if r.interrupted {
        return Err(Failure::from((
            130,
            format!(
                "interrupted: {} of {} archives of {range} done; run the same command again to resume",
                r.done, r.total
            ),
        )));
    }
    if r.failed > 0 {
        return Err(Failure::from((
            1,
            format!(
                "{} of {} archives of {range} failed (see `jma-poller status`)",
                r.failed, r.total
            ),
        )));
    }
    eprintln!("backfill: {} archives of {range} on disk", r.done);
    Ok(())
}
