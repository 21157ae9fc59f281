//! Plans the jmafile PuLL streams for `jmafile.types`: the fewest the API allows.
//!
//! Upstream, the list's `type` takes one value as a **prefix** and 2–5 values as **exact**
//! data identifiers (more than 5 is an error). So a configured list becomes:
//!
//! * nothing → one stream without `type` (everything the contract allows), named `jmafile`;
//! * each prefix (an entry that is not a full catalog identifier) → a stream of its own;
//! * the full identifiers → groups of 2–5, as few groups as possible, sizes as even as
//!   possible (6 → 3 + 3). A single full identifier must go alone, which upstream reads as a
//!   prefix: what else it brings (`OBS_AMDSCC` also starts `OBS_AMDSCC_Rjp_N1`) is dropped here.
//!
//! An entry covered by a prefix entry (`RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL` under `RDR_GPV`)
//! needs no stream of its own, nor does a repeat. A stream is named after what it sends
//! (`jmafile:RDR_GPV`, `jmafile:A,B,C` with its identifiers sorted), so it keeps its cursor
//! as long as its group is unchanged; [`prepare`] retires the cursors of streams no longer
//! planned and adopts a cursor kept under another name for the same types (an upgrade).

use std::collections::BTreeSet;

use crate::catalog::{Catalog, EntryKind};
use crate::model::TypeMatch;
use crate::state::prelude::*;
use crate::state::{Store, StoreError};

/// The name of the stream without `type` (also the cursor name of versions before streams).
pub const ALL: &str = "jmafile";
/// The API takes at most this many `type` values.
pub const MAX_EXACT: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// No `type`: everything.
    All,
    /// One value, a prefix match upstream.
    Prefix(String),
    /// Full identifiers, sorted. Two to five are matched exactly upstream; one alone is a
    /// prefix match upstream, so anything else it brings is dropped here.
    Exact(Vec<String>),
}

/// One PuLL stream: its own cursor, backlog and schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Its `cursors` row.
    pub name: String,
    pub filter: Filter,
}

impl Stream {
    pub fn new(filter: Filter) -> Stream {
        let name = match &filter {
            Filter::All => ALL.to_owned(),
            Filter::Prefix(p) => format!("{ALL}:{p}"),
            Filter::Exact(ids) => format!("{ALL}:{}", ids.join(",")),
        };
        Stream { name, filter }
    }

    /// The `type` values it sends (empty: no `type`).
    pub fn types(&self) -> Vec<String> {
        match &self.filter {
            Filter::All => Vec::new(),
            Filter::Prefix(p) => vec![p.clone()],
            Filter::Exact(ids) => ids.clone(),
        }
    }

    /// Whether an item the server returned is wanted. Only a lone full identifier can bring
    /// more than asked for; an item whose identifier is unknown is kept (never lose data).
    pub fn keeps(&self, identifier: Option<&str>) -> bool {
        match (&self.filter, identifier) {
            (Filter::Exact(ids), Some(id)) if ids.len() == 1 => ids[0] == id,
            _ => true,
        }
    }

    /// What the mirror's items must match to count as this stream's (for its start).
    pub fn matches(&self) -> Vec<TypeMatch> {
        match &self.filter {
            Filter::All => vec![TypeMatch::Any],
            Filter::Prefix(p) => vec![TypeMatch::Prefix(p.clone())],
            Filter::Exact(ids) => ids.iter().cloned().map(TypeMatch::Exact).collect(),
        }
    }
}

/// The streams for a `jmafile.types` list, and what the planner noticed about the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPlan {
    pub streams: Vec<Stream>,
    /// Entries that match nothing in the catalog (listed as prefixes; warned about at start).
    pub unknown: Vec<String>,
    /// Entries that need no stream: (entry, the prefix entry that covers it).
    pub covered: Vec<(String, String)>,
}

impl StreamPlan {
    pub fn names(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }
}

/// Plans the fewest streams for `types` (see the module comment).
pub fn plan(types: &[String], catalog: &Catalog) -> StreamPlan {
    let mut out = StreamPlan::default();
    let entries: BTreeSet<&str> = types
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if entries.is_empty() {
        out.streams.push(Stream::new(Filter::All));
        return out;
    }
    let mut prefixes: Vec<&str> = Vec::new();
    let mut exact: Vec<&str> = Vec::new();
    for entry in &entries {
        match catalog.classify(entry) {
            EntryKind::Exact { .. } => exact.push(entry),
            EntryKind::Prefix { .. } => prefixes.push(entry),
            EntryKind::Unknown => {
                out.unknown.push((*entry).to_owned());
                prefixes.push(entry);
            }
        }
    }
    // A prefix under a shorter prefix adds nothing (the set is sorted, so shorter first).
    let mut kept_prefixes: Vec<&str> = Vec::new();
    for p in prefixes {
        match kept_prefixes.iter().find(|k| p.starts_with(**k)) {
            Some(by) => out.covered.push((p.to_owned(), (*by).to_owned())),
            None => kept_prefixes.push(p),
        }
    }
    let mut kept_exact: Vec<&str> = Vec::new();
    for e in exact {
        match kept_prefixes.iter().find(|k| e.starts_with(**k)) {
            Some(by) => out.covered.push((e.to_owned(), (*by).to_owned())),
            None => kept_exact.push(e),
        }
    }
    for p in kept_prefixes {
        out.streams.push(Stream::new(Filter::Prefix(p.to_owned())));
    }
    for group in groups(&kept_exact) {
        out.streams.push(Stream::new(Filter::Exact(
            group.iter().map(|s| (*s).to_owned()).collect(),
        )));
    }
    out
}

/// Splits sorted identifiers into the fewest groups of at most [`MAX_EXACT`], sizes as even as
/// possible, so no group is left with one (which upstream would read as a prefix) unless there
/// is only one identifier.
fn groups<'a>(ids: &[&'a str]) -> Vec<Vec<&'a str>> {
    if ids.is_empty() {
        return Vec::new();
    }
    let n = ids.len();
    let count = n.div_ceil(MAX_EXACT);
    let (base, extra) = (n / count, n % count);
    let mut out = Vec::with_capacity(count);
    let mut at = 0;
    for g in 0..count {
        let size = base + usize::from(g < extra);
        out.push(ids[at..at + size].to_vec());
        at += size;
    }
    out
}

/// What [`prepare`] did to the stored cursors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// (old name, new name): a cursor kept for the same types under another name.
    pub adopted: Vec<(String, String)>,
    /// Cursors of streams no longer planned, removed.
    pub retired: Vec<String>,
}

/// Before the streams start: a planned stream without a cursor of its own adopts one kept for
/// exactly its types under another name (the single cursor of earlier versions, say), and the
/// cursors of streams no longer planned are removed. Each change is one statement, so a crash
/// in between only leaves work for the next start.
pub async fn prepare(store: &Store, plan: &StreamPlan) -> Result<Prepared, StoreError> {
    let mut done = Prepared::default();
    let planned = plan.names();
    let stored = store.jmafile_cursors().await?;
    for stream in &plan.streams {
        if stored.iter().any(|(name, _)| *name == stream.name) {
            continue;
        }
        let want: BTreeSet<String> = stream.types().into_iter().collect();
        let donor = stored.iter().find(|(name, cursor)| {
            !planned.contains(name)
                && cursor.last_poll_ms.is_some()
                && !done.adopted.iter().any(|(from, _)| from == name)
                && super::jmafile::stored_types(cursor)
                    .is_some_and(|t| t.into_iter().collect::<BTreeSet<_>>() == want)
        });
        if let Some((name, _)) = donor
            && store.rename_cursor(name, &stream.name).await?
        {
            done.adopted.push((name.clone(), stream.name.clone()));
        }
    }
    done.retired = store.retire_jmafile_cursors(&planned).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> &'static Catalog {
        crate::catalog::get()
    }

    fn p(types: &[&str]) -> StreamPlan {
        plan(
            &types.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            cat(),
        )
    }

    const SIX: [&str; 6] = [
        "FLA_GPV_Rjp_ANAL",
        "MET_INF_Jdosha_Ggis1km_ANAL",
        "NOWC_GPV_Ggis1km_Plts10_FH0000-0100",
        "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL",
        "SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06",
        "WPR_SEQ_RS-all_Pww",
    ];

    #[test]
    fn no_types_is_one_stream_for_everything() {
        let plan = p(&[]);
        assert_eq!(plan.streams, vec![Stream::new(Filter::All)]);
        assert_eq!(plan.streams[0].name, "jmafile");
        assert!(plan.streams[0].types().is_empty());
        assert_eq!(p(&["", " "]).streams, plan.streams);
    }

    #[test]
    fn each_prefix_is_a_stream_of_its_own() {
        let plan = p(&["SRF_GPV", "RDR_GPV"]);
        assert_eq!(plan.names(), vec!["jmafile:RDR_GPV", "jmafile:SRF_GPV"]);
        assert!(plan.unknown.is_empty());
        assert_eq!(plan.streams[0].types(), vec!["RDR_GPV"]);
    }

    #[test]
    fn full_identifiers_go_in_the_fewest_groups_of_two_to_five() {
        let plan = p(&SIX[..5]);
        assert_eq!(plan.streams.len(), 1, "five fit one call");
        assert_eq!(plan.streams[0].types().len(), 5);
        let plan = p(&SIX);
        let sizes: Vec<usize> = plan.streams.iter().map(|s| s.types().len()).collect();
        assert_eq!(sizes, vec![3, 3], "six: never 5 + a lone one");
        // The arithmetic alone, for every size up to 23.
        for n in 1..=23usize {
            let names: Vec<String> = (0..n).map(|i| format!("{i:02}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let g = groups(&refs);
            assert_eq!(g.len(), n.div_ceil(5), "n={n}");
            assert_eq!(g.iter().map(Vec::len).sum::<usize>(), n);
            assert!(g.iter().all(|x| x.len() <= 5));
            if n >= 2 {
                assert!(g.iter().all(|x| x.len() >= 2), "n={n}: {g:?}");
            }
        }
    }

    #[test]
    fn a_lone_identifier_keeps_only_itself() {
        let plan = p(&["OBS_AMDSCC"]);
        assert_eq!(plan.streams.len(), 1);
        let s = &plan.streams[0];
        assert_eq!(s.filter, Filter::Exact(vec!["OBS_AMDSCC".into()]));
        assert!(s.keeps(Some("OBS_AMDSCC")));
        assert!(
            !s.keeps(Some("OBS_AMDSCC_Rjp_N1")),
            "the over-match is dropped"
        );
        assert!(s.keeps(None), "an item without an identifier is kept");
        // In a group, upstream matches exactly: nothing to drop.
        let plan = p(&["OBS_AMDSCC", "FLA_GPV_Rjp_ANAL"]);
        assert!(plan.streams[0].keeps(Some("anything")));
        // A prefix keeps what it gets.
        assert!(p(&["OBS_AMDS"]).streams[0].keeps(Some("OBS_AMDSCC_Rjp_N1")));
    }

    #[test]
    fn a_mix_plans_prefixes_and_groups_and_drops_what_a_prefix_covers() {
        let plan = p(&[
            "RDR_GPV",
            "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL",
            "RDR_GPV_Ggis1km",
            "FLA_GPV_Rjp_ANAL",
            "OBS_AMDS_Rjp_N1",
            "MET_INF_Jdosha_Ggis1km_ANAL",
            "FLA_GPV_Rjp_ANAL",
            "RDR_TYPO_X",
        ]);
        assert_eq!(
            plan.names(),
            vec![
                "jmafile:RDR_GPV",
                "jmafile:RDR_TYPO_X",
                "jmafile:FLA_GPV_Rjp_ANAL,MET_INF_Jdosha_Ggis1km_ANAL,OBS_AMDS_Rjp_N1",
            ]
        );
        assert_eq!(plan.unknown, vec!["RDR_TYPO_X"]);
        assert_eq!(
            plan.covered,
            vec![
                ("RDR_GPV_Ggis1km".to_string(), "RDR_GPV".to_string()),
                (
                    "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL".to_string(),
                    "RDR_GPV".to_string()
                ),
            ]
        );
    }

    #[test]
    fn names_do_not_depend_on_the_order_of_the_list() {
        let mut rev: Vec<&str> = SIX.to_vec();
        rev.reverse();
        assert_eq!(p(&SIX).names(), p(&rev).names());
    }

    #[test]
    fn the_example_configs_plan_as_documented() {
        // config/jma-poller.toml: `types = []`; its env example `RDR_GPV,SRF_GPV`.
        assert_eq!(p(&[]).streams.len(), 1);
        assert_eq!(p(&["RDR_GPV", "SRF_GPV"]).streams.len(), 2);
    }

    #[tokio::test]
    async fn prepare_adopts_an_old_cursor_for_the_same_types_and_retires_the_rest() {
        use crate::model::Cursor;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).await.unwrap();
        let cursor = |types: &[&str]| Cursor {
            token: Some("t".into()),
            last_poll_ms: Some(1),
            query: serde_json::json!({"types": types, "since": null}).to_string(),
            high_serial: Some(7),
            ..Cursor::default()
        };
        // An earlier version's single cursor, for one exact identifier.
        store
            .commit_poll("jmafile", &cursor(&["FLA_GPV_Rjp_ANAL"]), &[], 1, None)
            .await
            .unwrap();
        store
            .commit_poll("jmafile:OLD", &cursor(&["OLD"]), &[], 1, None)
            .await
            .unwrap();
        store
            .commit_poll("archive", &cursor(&[]), &[], 1, None)
            .await
            .unwrap();
        let plan = p(&["FLA_GPV_Rjp_ANAL", "SRF_GPV"]);
        let done = prepare(&store, &plan).await.unwrap();
        assert_eq!(
            done.adopted,
            vec![(
                "jmafile".to_string(),
                "jmafile:FLA_GPV_Rjp_ANAL".to_string()
            )]
        );
        assert_eq!(done.retired, vec!["jmafile:OLD".to_string()]);
        let names: Vec<String> = store
            .jmafile_cursors()
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["jmafile:FLA_GPV_Rjp_ANAL"]);
        let kept = store
            .cursor("jmafile:FLA_GPV_Rjp_ANAL")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.token.as_deref(), Some("t"), "the position is kept");
        assert!(store.cursor("archive").await.unwrap().is_some(), "not ours");
        // Again: nothing to do.
        assert_eq!(prepare(&store, &plan).await.unwrap(), Prepared::default());
        store.close().await;
    }
}
