//! `jma-poller state copy`: one node's whole state moved into another database (SQLite to
//! PostgreSQL to join a cluster, and back), so nothing done is ever downloaded again.
//!
//! The tables are described once here ([`TABLES`]) and each backend reads and writes them
//! (`sqlite::copy`, `postgres::copy`): rows are read in pages of [`PAGE`] items by `seq`, with
//! their files and hook runs, so a million items never sit in memory at once, and written
//! through the target's own schema, whose triggers keep `counts` and `hook_counts` right. The
//! whole import is one transaction on the target: all or nothing.
//!
//! What is not copied: `leaders`, `nodes` and `request_ledger` (a cluster starts fresh), and
//! claims in flight: the source is stopped, so an item it was fetching goes back to `pending`
//! with no owner, and a hook that was running back to `pending`.

use std::time::Instant;

use super::{Store, StoreError};

/// Items read and written per round trip.
pub const PAGE: i64 = 1000;

/// A progress line every this many items.
pub const PROGRESS_EVERY: u64 = 10_000;

/// A column's type, as both backends store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
}

/// One value read from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
}

/// A table to copy, with the columns both schemas have.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    /// Read in pages of items by `seq` (`items`) or with each page's seq range (its children);
    /// false: small tables, read whole.
    pub by_seq: bool,
}

use Kind::{Int, Text};

pub const ITEMS: Table = Table {
    name: "items",
    columns: &[
        ("seq", Int),
        ("source", Text),
        ("id", Text),
        ("serial", Int),
        ("classification", Text),
        ("received_ms", Int),
        ("url", Text),
        ("plan", Text),
        ("state", Text),
        ("priority", Int),
        ("attempts", Int),
        ("throttles", Int),
        ("next_attempt_ms", Int),
        ("last_error", Text),
        ("path", Text),
        ("bytes", Int),
        ("listed_ms", Int),
        ("started_ms", Int),
        ("finished_ms", Int),
        ("last_request_ms", Int),
        ("hold_until_ms", Int),
        ("hold_reason", Text),
        ("type_name", Text),
        ("owner", Text),
        ("lease_until_ms", Int),
        ("fencing", Int),
    ],
    by_seq: true,
};

pub const ITEM_FILES: Table = Table {
    name: "item_files",
    columns: &[
        ("seq", Int),
        ("name", Text),
        ("bytes", Int),
        ("sha256", Text),
    ],
    by_seq: true,
};

pub const HOOKS: Table = Table {
    name: "hooks",
    columns: &[
        ("seq", Int),
        ("state", Text),
        ("attempts", Int),
        ("next_attempt_ms", Int),
        ("exit_code", Int),
        ("last_error", Text),
        ("finished_ms", Int),
    ],
    by_seq: true,
};

pub const CURSORS: Table = Table {
    name: "cursors",
    columns: &[
        ("name", Text),
        ("token", Text),
        ("query", Text),
        ("high_serial", Int),
        ("backlog_token", Text),
        ("backlog_pooling", Text),
        ("backlog_high", Int),
        ("last_received_ms", Int),
        ("interval_ms", Int),
        ("last_poll_ms", Int),
        ("last_error", Text),
        ("last_error_ms", Int),
    ],
    by_seq: false,
};

pub const FRESHNESS: Table = Table {
    name: "freshness",
    columns: &[
        ("source", Text),
        ("classification", Text),
        ("type_name", Text),
        ("last_landed_ms", Int),
        ("last_received_ms", Int),
        ("interval_ms", Int),
        ("samples", Int),
    ],
    by_seq: false,
};

pub const LANDINGS: Table = Table {
    name: "landings",
    columns: &[("hour", Int), ("items", Int)],
    by_seq: false,
};

/// Pruned to the last day, so read whole.
pub const FETCH_LOG: Table = Table {
    name: "fetch_log",
    columns: &[("at_ms", Int)],
    by_seq: false,
};

/// The small tables, copied after the items (the freshness trigger fires only when an item
/// turns done, never on insert, so the source's rows are the truth).
pub const WHOLE: [&Table; 4] = [&CURSORS, &FRESHNESS, &LANDINGS, &FETCH_LOG];

/// Every table copied, in the order of the report.
pub const TABLES: [&Table; 7] = [
    &ITEMS,
    &ITEM_FILES,
    &HOOKS,
    &CURSORS,
    &FRESHNESS,
    &LANDINGS,
    &FETCH_LOG,
];

impl Table {
    /// The column list, comma-separated.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What to select: integers as BIGINT (PostgreSQL's `hooks.exit_code` is INTEGER).
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, k)| match k {
                Int => format!("CAST({c} AS BIGINT)"),
                Text => (*c).to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn index(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|(c, _)| *c == column)
    }
}

/// Which rows of a table to read.
#[derive(Debug, Clone, Copy)]
pub enum Rows {
    /// Every row.
    All,
    /// Up to `limit` rows with seq above `after`, by seq.
    After { after: i64, limit: i64 },
    /// Rows with seq in `(after, upto]`.
    Range { after: i64, upto: i64 },
}

impl Rows {
    /// The WHERE/ORDER/LIMIT tail of the SELECT (numbers only, never input).
    pub fn sql_tail(&self) -> String {
        match self {
            Rows::All => String::new(),
            Rows::After { after, limit } => {
                format!(" WHERE seq > {after} ORDER BY seq LIMIT {limit}")
            }
            Rows::Range { after, upto } => {
                format!(" WHERE seq > {after} AND seq <= {upto} ORDER BY seq")
            }
        }
    }
}

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "the target database is not empty: {target} already has {what}; copy into a new database (state copy never merges)"
    )]
    NotEmpty { target: String, what: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What a copy moved.
#[derive(Debug, Default, Clone)]
pub struct CopyReport {
    /// Rows per table, in [`TABLES`] order.
    pub rows: Vec<(&'static str, u64)>,
    /// Items that were being fetched in the source, queued again.
    pub claims_reset: u64,
    pub elapsed: std::time::Duration,
}

impl CopyReport {
    /// One line: rows per table, claims put back, time.
    pub fn summary(&self) -> String {
        let tables: Vec<String> = self.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
        format!(
            "copied {}; {} claim(s) in flight queued again; {:.1}s",
            tables.join(", "),
            self.claims_reset,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Puts a claim in flight back in the queue: the source is stopped, nobody holds it.
fn release_claim(row: &mut [Cell]) -> bool {
    let (Some(state), Some(owner), Some(lease)) = (
        ITEMS.index("state"),
        ITEMS.index("owner"),
        ITEMS.index("lease_until_ms"),
    ) else {
        return false;
    };
    row[owner] = Cell::Text(None);
    row[lease] = Cell::Int(None);
    if row[state] == Cell::Text(Some("fetching".into())) {
        row[state] = Cell::Text(Some("pending".into()));
        return true;
    }
    false
}

/// A hook that was running goes back to pending (the daemon does the same at start).
fn release_hook(row: &mut [Cell]) {
    if let Some(state) = HOOKS.index("state")
        && row[state] == Cell::Text(Some("running".into()))
    {
        row[state] = Cell::Text(Some("pending".into()));
    }
}

fn seq_of(row: &[Cell]) -> Option<i64> {
    match row.first() {
        Some(Cell::Int(seq)) => *seq,
        _ => None,
    }
}

/// Copies everything from `from` into `to` (named `target_name` in errors), in one
/// transaction on `to`; `progress` is called with the items copied so far every
/// [`PROGRESS_EVERY`] items. Refuses a target that already has items or cursors.
pub async fn copy_state(
    from: &Store,
    to: &Store,
    target_name: &str,
    mut progress: impl FnMut(u64),
) -> Result<CopyReport, CopyError> {
    let start = Instant::now();
    let mut import = to.begin_import().await?;
    if let Some(what) = import.contents().await? {
        import.rollback().await;
        return Err(CopyError::NotEmpty {
            target: target_name.to_owned(),
            what,
        });
    }
    let mut counts = [0u64; TABLES.len()];
    let mut claims_reset = 0;
    let mut after = 0;
    loop {
        let mut items = from
            .export_rows(&ITEMS, Rows::After { after, limit: PAGE })
            .await?;
        let Some(upto) = items.last().and_then(|r| seq_of(r)) else {
            break;
        };
        for row in &mut items {
            claims_reset += u64::from(release_claim(row));
        }
        import.insert_rows(&ITEMS, &items).await?;
        let files = from
            .export_rows(&ITEM_FILES, Rows::Range { after, upto })
            .await?;
        import.insert_rows(&ITEM_FILES, &files).await?;
        let mut hooks = from
            .export_rows(&HOOKS, Rows::Range { after, upto })
            .await?;
        hooks.iter_mut().for_each(|r| release_hook(r));
        import.insert_rows(&HOOKS, &hooks).await?;
        let before = counts[0];
        counts[0] += items.len() as u64;
        counts[1] += files.len() as u64;
        counts[2] += hooks.len() as u64;
        if counts[0] / PROGRESS_EVERY > before / PROGRESS_EVERY {
            progress(counts[0]);
        }
        after = upto;
    }
    for (i, table) in WHOLE.iter().enumerate() {
        let rows = from.export_rows(table, Rows::All).await?;
        import.insert_rows(table, &rows).await?;
        counts[3 + i] = rows.len() as u64;
    }
    import.commit().await?;
    Ok(CopyReport {
        rows: TABLES.iter().map(|t| t.name).zip(counts).collect(),
        claims_reset,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_starts_with_its_key_and_items_can_be_released() {
        for t in [&ITEMS, &ITEM_FILES, &HOOKS] {
            assert_eq!(t.columns[0], ("seq", Int), "{}", t.name);
        }
        let mut row: Vec<Cell> = ITEMS
            .columns
            .iter()
            .map(|(c, k)| match (c, k) {
                (&"state", _) => Cell::Text(Some("fetching".into())),
                (&"owner", _) => Cell::Text(Some("node-a".into())),
                (_, Int) => Cell::Int(Some(7)),
                (_, Text) => Cell::Text(Some("x".into())),
            })
            .collect();
        assert!(release_claim(&mut row));
        assert_eq!(row[8], Cell::Text(Some("pending".into())));
        assert_eq!(row[23], Cell::Text(None));
        assert_eq!(row[24], Cell::Int(None));
        assert!(!release_claim(&mut row), "a pending row is not counted");
    }
}
