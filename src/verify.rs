//! `jma-poller verify [--repair] [--json]`: the mirror on disk against what was recorded.
//!
//! Two passes, both streaming, so memory stays flat on a mirror of a million files:
//! 1. **Items → disk.** Done items are read by seq in pages of [`PAGE`]; each one's file (or
//!    folder) is read back and hashed, and compared with the size and SHA-256 recorded when it
//!    landed. Missing file or folder → `missing`; other bytes → `changed`; a folder missing
//!    some of its files → `incomplete`. An item with nothing recorded (landed before digests
//!    existed, or adopted after a crash) gets what is on disk recorded now, once its size
//!    agrees with the size it landed with: the only write verify makes without `--repair`.
//! 2. **Disk → items.** The data dir is walked one directory at a time (never a list of all
//!    paths), and each batch of names is looked up by the items' path index: a file no item
//!    owns is `unowned`, as is a file inside an item's folder that is not among its recorded
//!    files. The state database, `.tmp/`, `.lock` and `quarantine/` are not the mirror.
//!
//! Safe while the daemon runs: every read is one short transaction, findings are confirmed
//! against the item's current state before they are reported (retention may remove an item
//! meanwhile), and files the daemon is placing belong to rows that exist since listing.
//!
//! `--repair` moves each damaged item's file or folder into `{data_dir}/quarantine/{run}/`
//! (never deleted; the daemon's crash recovery only ever looks at an item's own path, so it
//! cannot adopt from there), then queues the item again in one transaction
//! ([`Store::requeue_damaged`]): it waits out `download.refetch_delay` after its previous
//! request and goes through the data budget like any other. A jmafile item older than the
//! month the API keeps is reported unrecoverable and left as it is. Unowned files are reported,
//! never touched.

use std::fs;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::digest::sha256_of;
use crate::download::plan::{Layout, Plan};
use crate::state::prelude::*;
use crate::state::{DamagedRepair, FileDigest, Store, StoreError, VerifyItem, now_ms};

/// Exit code of `verify` when it found damage (missing, changed, incomplete or unowned files).
/// 1 stays "could not run".
pub const EXIT_DAMAGED: u8 = 4;

/// Items read and checked per page (one short read transaction each).
const PAGE: i64 = 256;

/// Names looked up per query in the walk.
const BATCH: usize = 512;

/// Findings listed in the report per kind; more are counted.
pub const LISTED: usize = 1000;

/// Top-level entries of the data dir that are not the mirror.
const NOT_MIRROR: &[&str] = &[".tmp", ".lock", QUARANTINE, ".jma-poller-demo"];

/// Where `--repair` moves damaged files, inside the data dir.
pub const QUARANTINE: &str = "quarantine";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("verify task failed: {0}")]
    Task(String),
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The item's file or folder is not there.
    Missing,
    /// Its bytes differ from what landed.
    Changed,
    /// Its folder lacks some of its files.
    Incomplete,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::Changed => "changed",
            Problem::Incomplete => "incomplete",
        }
    }
}

/// What `--repair` did with a damaged item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Repair {
    /// Moved aside (when anything was there) and queued again; not requested before `due_ms`.
    Queued {
        quarantined: Option<String>,
        due_ms: i64,
    },
    /// The API no longer serves it: reported, left as it is.
    Unrecoverable { reason: String },
    /// No longer done when the repair came (the daemon or retention got there first).
    Skipped { reason: String },
}

/// One damaged item.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub source: String,
    pub id: String,
    pub classification: String,
    /// The item's path, relative to the data dir.
    pub path: String,
    pub problem: Problem,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
}

/// What verify found (the first [`LISTED`] of each kind listed, all counted).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub items: u64,
    pub files: u64,
    pub bytes: u64,
    /// Items whose files were recorded by this run (they had none).
    pub digests_recorded: u64,
    pub missing: u64,
    pub changed: u64,
    pub incomplete: u64,
    pub unowned: u64,
    pub queued: u64,
    pub unrecoverable: u64,
    pub damaged: Vec<Damaged>,
    /// Files no item owns, relative to the data dir.
    pub unowned_files: Vec<String>,
    pub seconds: f64,
}

impl Report {
    /// Nothing missing, changed, incomplete or unowned.
    pub fn clean(&self) -> bool {
        self.missing + self.changed + self.incomplete + self.unowned == 0
    }

    /// One line: what was checked, how fast, what was found.
    pub fn summary(&self) -> String {
        let secs = self.seconds.max(1e-6);
        format!(
            "verify: {} items, {} files, {} checked in {:.1} s ({:.0} files/s, {:.1} MB/s): {} missing, {} changed, {} incomplete, {} unowned; {} item(s) had their digests recorded{}",
            self.items,
            self.files,
            bytesize::ByteSize(self.bytes),
            self.seconds,
            self.files as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.missing,
            self.changed,
            self.incomplete,
            self.unowned,
            self.digests_recorded,
            if self.queued + self.unrecoverable > 0 {
                format!(
                    "; repair: {} queued again, {} unrecoverable",
                    self.queued, self.unrecoverable
                )
            } else {
                String::new()
            }
        )
    }

    fn count(&mut self, d: Damaged) {
        match d.problem {
            Problem::Missing => self.missing += 1,
            Problem::Changed => self.changed += 1,
            Problem::Incomplete => self.incomplete += 1,
        }
        match &d.repair {
            Some(Repair::Queued { .. }) => self.queued += 1,
            Some(Repair::Unrecoverable { .. }) => self.unrecoverable += 1,
            _ => {}
        }
        if self.damaged.len() < LISTED {
            self.damaged.push(d);
        }
    }
}

/// How verify runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    /// The state database (skipped in the walk when it lives in the data dir).
    pub database: PathBuf,
    pub repair: bool,
    /// A progress bar on stderr.
    pub progress: bool,
}

/// What checking one item found.
#[derive(Debug, Default)]
struct Checked {
    files: u64,
    bytes: u64,
    problem: Option<(Problem, String)>,
    /// Nothing was recorded and what is on disk agrees with what landed: record this.
    first: Option<Vec<FileDigest>>,
}

/// Runs both passes (and the repairs) and returns the report.
pub async fn run(store: &Store, opts: &Options) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let mut report = Report::default();
    let bar = progress_bar(opts.progress, store.done_count().await? as u64);
    let run_stamp = run_stamp();
    let mut after = 0;
    loop {
        let page = store.done_items_after(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let data_dir = opts.data_dir.clone();
        let (page, checked) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let checked: Vec<Checked> = page
                .iter()
                .map(|item| check_item(&data_dir, item, &mut buf))
                .collect();
            (page, checked)
        })
        .await
        .map_err(|e| VerifyError::Task(e.to_string()))?;
        let mut first = Vec::new();
        for (item, c) in page.iter().zip(checked) {
            report.items += 1;
            report.files += c.files;
            report.bytes += c.bytes;
            if let Some(digests) = c.first {
                first.push((item.seq, digests));
            }
            if let Some((problem, detail)) = c.problem {
                // Retention or a repair by someone else may have moved the item on meanwhile.
                if !store.still_done(item.seq).await? {
                    continue;
                }
                let repair = if opts.repair {
                    Some(repair(store, opts, item, problem, &detail, &run_stamp).await?)
                } else {
                    None
                };
                report.count(Damaged {
                    source: item.source.clone(),
                    id: item.id.clone(),
                    classification: item.classification.clone(),
                    path: item.path.clone(),
                    problem,
                    detail,
                    repair,
                });
            }
        }
        report.digests_recorded += store.record_first_digests(&first).await?;
        if let Some(bar) = &bar {
            bar.set_position(report.items);
            bar.set_message(format!(
                "{} files, {}",
                report.files,
                bytesize::ByteSize(report.bytes)
            ));
        }
    }
    if let Some(bar) = &bar {
        bar.set_message("looking for files no item owns".to_owned());
    }
    find_unowned(store, opts, &mut report).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn progress_bar(on: bool, total: u64) -> Option<indicatif::ProgressBar> {
    (on && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    })
}

/// "20261201T231800Z": one quarantine folder per run.
fn run_stamp() -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| now_ms().to_string())
}

/// Reads one item back and compares it with what was recorded.
fn check_item(data_dir: &Path, item: &VerifyItem, buf: &mut [u8]) -> Checked {
    let path = data_dir.join(&item.path);
    let layout = serde_json::from_str::<Plan>(&item.plan)
        .ok()
        .map(|p| p.layout);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return problem(Problem::Missing, "not on disk".into());
        }
        Err(e) => return problem(Problem::Missing, format!("cannot read: {e}")),
    };
    match layout {
        Some(Layout::Single { .. }) if !meta.is_file() => {
            problem(Problem::Changed, "not a regular file".into())
        }
        Some(Layout::Single { .. }) => check_file(&path, item, buf),
        Some(Layout::Concat { .. } | Layout::Archive { .. }) if !meta.is_dir() => {
            problem(Problem::Changed, "not a folder".into())
        }
        Some(Layout::Concat { children }) if item.files.is_empty() => {
            let expected: Vec<FileDigest> = children
                .into_iter()
                .map(|c| FileDigest {
                    name: c.name,
                    bytes: c.length,
                    sha256: String::new(),
                })
                .collect();
            check_folder(&path, &expected, buf, true)
        }
        Some(Layout::Archive { .. }) | None if item.files.is_empty() && meta.is_dir() => {
            first_look_at_folder(&path, item, buf)
        }
        None if item.files.is_empty() => check_file(&path, item, buf),
        _ => check_folder(&path, &item.files, buf, false),
    }
}

fn problem(p: Problem, detail: String) -> Checked {
    Checked {
        problem: Some((p, detail)),
        ..Checked::default()
    }
}

/// A single-file item: hash it, compare with the recorded digest (or, with none recorded, with
/// the size it landed with, and record it).
fn check_file(path: &Path, item: &VerifyItem, buf: &mut [u8]) -> Checked {
    let (bytes, sha256) = match fs::File::open(path).and_then(|f| sha256_of(f, buf)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return problem(Problem::Missing, "not on disk".into());
        }
        Err(e) => return problem(Problem::Changed, format!("cannot read: {e}")),
    };
    let mut checked = Checked {
        files: 1,
        bytes,
        ..Checked::default()
    };
    match item.files.iter().find(|f| f.name.is_empty()) {
        Some(rec) if rec.bytes != bytes => {
            checked.problem = Some((
                Problem::Changed,
                format!("{bytes} bytes on disk, {} landed", rec.bytes),
            ));
        }
        Some(rec) if rec.sha256 != sha256 => {
            checked.problem = Some((
                Problem::Changed,
                format!("SHA-256 {sha256}, {} landed", rec.sha256),
            ));
        }
        Some(_) => {}
        None => match item.bytes {
            Some(landed) if landed as u64 != bytes => {
                checked.problem = Some((
                    Problem::Changed,
                    format!("{bytes} bytes on disk, {landed} landed (no digest was recorded)"),
                ));
            }
            _ => {
                checked.first = Some(vec![FileDigest {
                    name: String::new(),
                    bytes,
                    sha256,
                }]);
            }
        },
    }
    checked
}

/// A folder item against its expected files (recorded, or a concat's children when nothing is
/// recorded yet: sizes only, and then recorded).
fn check_folder(
    folder: &Path,
    expected: &[FileDigest],
    buf: &mut [u8],
    record_if_sound: bool,
) -> Checked {
    let mut checked = Checked::default();
    let mut missing = Vec::new();
    let mut changed = Vec::new();
    let mut found = Vec::new();
    for want in expected {
        let path = folder.join(&want.name);
        match fs::File::open(&path).and_then(|f| sha256_of(f, buf)) {
            Ok((bytes, sha256)) => {
                checked.files += 1;
                checked.bytes += bytes;
                if bytes != want.bytes || (!want.sha256.is_empty() && sha256 != want.sha256) {
                    changed.push(want.name.clone());
                }
                found.push(FileDigest {
                    name: want.name.clone(),
                    bytes,
                    sha256,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(want.name.clone()),
            Err(_) => changed.push(want.name.clone()),
        }
    }
    if !missing.is_empty() {
        checked.problem = Some((
            Problem::Incomplete,
            format!(
                "{} of {} files missing: {}",
                missing.len(),
                expected.len(),
                names(&missing)
            ),
        ));
    } else if !changed.is_empty() {
        checked.problem = Some((
            Problem::Changed,
            format!(
                "{} of {} files changed: {}",
                changed.len(),
                expected.len(),
                names(&changed)
            ),
        ));
    } else if record_if_sound {
        checked.first = Some(found);
    }
    checked
}

/// Up to 5 names, then "…".
fn names(list: &[String]) -> String {
    let mut s = list
        .iter()
        .take(5)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > 5 {
        s.push_str(", …");
    }
    s
}

/// An archive folder with nothing recorded: every file in it is hashed; if their total is the
/// size the item landed with, they are recorded.
fn first_look_at_folder(folder: &Path, item: &VerifyItem, buf: &mut [u8]) -> Checked {
    let mut checked = Checked::default();
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = match fs::read_dir(folder.join(&rel)) {
            Ok(e) => e,
            Err(e) => return problem(Problem::Changed, format!("cannot read: {e}")),
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(child),
                Ok(t) if t.is_file() => {
                    let path = folder.join(&child);
                    match fs::File::open(&path).and_then(|f| sha256_of(f, buf)) {
                        Ok((bytes, sha256)) => {
                            checked.files += 1;
                            checked.bytes += bytes;
                            found.push(FileDigest {
                                name: child.to_string_lossy().into_owned(),
                                bytes,
                                sha256,
                            });
                        }
                        Err(e) => return problem(Problem::Changed, format!("cannot read: {e}")),
                    }
                }
                _ => {}
            }
        }
    }
    match item.bytes {
        Some(landed) if landed as u64 != checked.bytes => {
            checked.problem = Some((
                Problem::Incomplete,
                format!(
                    "the folder holds {} bytes in {} files, {landed} landed (no digests were recorded)",
                    checked.bytes, checked.files
                ),
            ));
        }
        _ => checked.first = Some(found),
    }
    checked
}

/// `--repair` for one damaged item: unrecoverable, or moved aside and queued again.
async fn repair(
    store: &Store,
    opts: &Options,
    item: &VerifyItem,
    problem: Problem,
    detail: &str,
    run_stamp: &str,
) -> Result<Repair, VerifyError> {
    let keeps = crate::poll::jmafile::API_KEEPS.as_millis() as i64;
    if item.source == "jmafile" && item.received_ms.is_some_and(|r| r < now_ms() - keeps) {
        return Ok(Repair::Unrecoverable {
            reason: "received more than 30 days ago: the API no longer serves it; left as it is"
                .into(),
        });
    }
    let from = opts.data_dir.join(&item.path);
    let rel_aside = format!("{QUARANTINE}/{run_stamp}/{}", item.path);
    let quarantined = match fs::symlink_metadata(&from) {
        Ok(_) => {
            let to = opts.data_dir.join(&rel_aside);
            move_aside(&from, &to)?;
            Some(rel_aside)
        }
        Err(_) => None,
    };
    let reason = format!("verify: {}: {detail}", problem.as_str());
    Ok(match store.requeue_damaged(item.seq, &reason).await? {
        DamagedRepair::Queued { due_ms } => {
            tracing::info!(event = "repair_queued", source = %item.source, id = %item.id, classification = %item.classification, path = %item.path, quarantined = quarantined.as_deref().unwrap_or(""), "damaged item moved aside and queued again");
            Repair::Queued {
                quarantined,
                due_ms,
            }
        }
        DamagedRepair::NotDone => Repair::Skipped {
            reason: "no longer done when the repair came".into(),
        },
    })
}

/// Renames `from` to `to` (same filesystem), creating `to`'s folders, and makes it durable.
fn move_aside(from: &Path, to: &Path) -> Result<(), VerifyError> {
    let parent = to.parent().unwrap_or(to);
    fs::create_dir_all(parent).map_err(io_at(parent))?;
    fs::rename(from, to).map_err(io_at(from))?;
    crate::storage::sync_dir(parent).map_err(io_at(parent))?;
    if let Some(old) = from.parent() {
        crate::storage::sync_dir(old).map_err(io_at(old))?;
    }
    Ok(())
}

/// A folder to walk, and the item whose folder it is (or is inside), if any.
struct Pending {
    abs: PathBuf,
    rel: String,
    owner: Option<Owner>,
}

#[derive(Clone)]
struct Owner {
    seq: i64,
    /// Its files are recorded: only those belong to it.
    recorded: bool,
    /// The item's folder, relative to the data dir.
    folder: String,
}

/// Pass 2: every file under the data dir that no item owns.
async fn find_unowned(
    store: &Store,
    opts: &Options,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let database = fs::canonicalize(&opts.database).unwrap_or_else(|_| opts.database.clone());
    let mut stack = vec![Pending {
        abs: opts.data_dir.clone(),
        rel: String::new(),
        owner: None,
    }];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir.abs) {
            Ok(e) => e,
            // Removed meanwhile (retention, a repair): nothing left to own.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_at(&dir.abs)(e)),
        };
        let mut files = Vec::with_capacity(BATCH);
        for entry in entries {
            let entry = entry.map_err(io_at(&dir.abs))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                report_unowned(
                    report,
                    format!("{}{}", prefix(&dir.rel), name.to_string_lossy()),
                );
                continue;
            };
            if dir.rel.is_empty()
                && (NOT_MIRROR.contains(&name) || is_database(&entry.path(), &database))
            {
                continue;
            }
            let rel = format!("{}{name}", prefix(&dir.rel));
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    let owner = match &dir.owner {
                        Some(o) => Some(o.clone()),
                        None => store.item_at(&rel).await?.map(|(seq, recorded)| Owner {
                            seq,
                            recorded,
                            folder: rel.clone(),
                        }),
                    };
                    stack.push(Pending {
                        abs: entry.path(),
                        rel,
                        owner,
                    });
                }
                _ => {
                    files.push(rel);
                    if files.len() == BATCH {
                        judge(store, &dir, std::mem::take(&mut files), report).await?;
                    }
                }
            }
        }
        judge(store, &dir, files, report).await?;
    }
    Ok(())
}

fn prefix(rel: &str) -> String {
    if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}/")
    }
}

/// The state database and its `-wal`, `-shm` and `-journal` companions.
fn is_database(path: &Path, database: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let (Some(name), Some(db)) = (path.to_str(), database.to_str()) else {
        return false;
    };
    name == db
        || ["-wal", "-shm", "-journal"]
            .iter()
            .any(|s| name.strip_suffix(s) == Some(db))
}

fn report_unowned(report: &mut Report, rel: String) {
    report.unowned += 1;
    if report.unowned_files.len() < LISTED {
        report.unowned_files.push(rel);
    }
}

/// Which of `files` (in `dir`) no item owns.
async fn judge(
    store: &Store,
    dir: &Pending,
    files: Vec<String>,
    report: &mut Report,
) -> Result<(), VerifyError> {
    if files.is_empty() {
        return Ok(());
    }
    match &dir.owner {
        // Inside an item's folder with nothing recorded: the item's own (verify recorded what
        // it could in pass 1; one that did not agree with its size is reported there).
        Some(owner) if !owner.recorded => {}
        Some(owner) => {
            let cut = owner.folder.len() + 1;
            let names: Vec<String> = files.iter().map(|f| f[cut..].to_owned()).collect();
            let known = store.recorded_names(owner.seq, &names).await?;
            for (file, name) in files.into_iter().zip(names) {
                if !known.contains(&name) {
                    report_unowned(report, file);
                }
            }
        }
        None => {
            let owned = store.owned_paths(&files).await?;
            for file in files {
                if !owned.contains(&file) {
                    report_unowned(report, file);
                }
            }
        }
    }
    Ok(())
}
