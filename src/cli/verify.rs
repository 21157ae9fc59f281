//! `verify`: checks the mirror on disk against what was recorded, and repairs.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::status::due;
use super::{Failure, load};
use crate::config::Settings;
use crate::state::Store;
use crate::state::prelude::*;

/// `jma-poller verify`, logging only problems while a progress bar shows the work.
pub(super) async fn command(
    config: &Option<PathBuf>,
    repair: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut settings = load(config)?;
    if std::io::stderr().is_terminal() && std::env::var_os("RUST_LOG").is_none() {
        // The progress bar shows the work; keep only problems in the log.
        settings.log.level = "warn".into();
    }
    crate::telemetry::init(&settings.log);
    verify(&settings, repair, json).await
}

/// `jma-poller verify`: runs both passes, prints the findings (or the JSON report) and the
/// summary line; exit [`crate::verify::EXIT_DAMAGED`] when anything was found.
async fn verify(settings: &Settings, repair: bool, json: bool) -> Result<(), Failure> {
    let target = settings
        .storage
        .database_target()
        .map_err(|e| Failure::from((2, e)))?;
    if let Some(path) = target.sqlite_path()
        && !path.exists()
    {
        return Err(Failure::from((
            1,
            format!("no database at {} (storage.database)", path.display()),
        )));
    }
    let store = Store::open(&target)
        .await
        .map_err(|e| Failure::from((1, e)))?;
    let opts = crate::verify::Options {
        data_dir: settings.storage.data_dir.clone(),
        database: std::path::PathBuf::from(target.shown()),
        repair,
        progress: true,
    };
    let result = crate::verify::run(&store, &opts).await;
    store.close().await;
    let report = result.map_err(|e| Failure::from((1, e)))?;
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Failure::from((1, e)))?;
        println!("{text}");
        eprintln!("{}", report.summary());
    } else {
        print_verify_findings(&report);
        println!("{}", report.summary());
    }
    if report.clean() {
        return Ok(());
    }
    Err(Failure::from((
        crate::verify::EXIT_DAMAGED,
        format!(
            "verify found damage: {} missing, {} changed, {} incomplete, {} unowned{}",
            report.missing,
            report.changed,
            report.incomplete,
            report.unowned,
            if repair {
                ""
            } else {
                " (`jma-poller verify --repair` moves damaged files aside and fetches them again)"
            }
        ),
    )))
}

fn print_verify_findings(report: &crate::verify::Report) {
    for d in &report.damaged {
        let repair = match &d.repair {
            None => String::new(),
            Some(crate::verify::Repair::Queued {
                quarantined,
                due_ms,
            }) => format!(
                " -> queued again, due {}{}",
                due(*due_ms),
                quarantined
                    .as_deref()
                    .map(|q| format!(", damaged copy moved to {q}"))
                    .unwrap_or_default()
            ),
            Some(crate::verify::Repair::Unrecoverable { reason }) => {
                format!(" -> unrecoverable: {reason}")
            }
            Some(crate::verify::Repair::Skipped { reason }) => format!(" -> skipped: {reason}"),
        };
        println!(
            "{:<10} {} {} [{}] {}: {}{repair}",
            d.problem.as_str(),
            d.source,
            d.id,
            d.classification,
            d.path,
            d.detail
        );
    }
    for f in &report.unowned_files {
        println!("{:<10} {f}: no item owns this file (left alone)", "unowned");
    }
    let listed = (report.damaged.len() + report.unowned_files.len()) as u64;
    let total = report.missing + report.changed + report.incomplete + report.unowned;
    if total > listed {
        println!(
            "… and {} more (listed: the first {} of each kind)",
            total - listed,
            crate::verify::LISTED
        );
    }
}
