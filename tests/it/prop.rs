//! Property tests (proptest): file names, the concat splitter, the gzip cap, tolerant list
//! parsing and the request budget, each over a few hundred generated cases. The fuzz targets in
//! `fuzz/` cover the same code with arbitrary bytes; these run in every `cargo test`.
//!
//! A failure prints the minimal input and a seed; proptest also records it under
//! `proptest-regressions/` so it is tried first next time.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path};
use std::time::Duration;

use flate2::Compression as Level;
use flate2::write::GzEncoder;
use jma_poller::api::budget::Budget;
use jma_poller::api::models::{JmaFileItem, ListPage};
use jma_poller::download::decode::{DecodeError, Decoded, Staged, decode};
use jma_poller::download::plan::{Child, Compression, Layout, Plan, disambiguate};
use jma_poller::storage::safe_component;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Regressions are reported, not written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) names

/// Names that hit the interesting cases often: separators, dots, NUL, controls, long names.
fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a./\\\\~\u{0}\u{1f} ]{0,8}",
        "[a-zA-Z0-9_.~-]{1,20}",
        "[a-z.]{240,300}",
        "[日a.]{80,100}",
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just(".tmp".to_owned()),
    ]
}

/// One normal path component equal to `name`, without separators, NUL or controls, not "."
/// or "..", 1-255 bytes.
fn assert_single_component(name: &str) -> Result<(), TestCaseError> {
    let comps: Vec<Component> = Path::new(name).components().collect();
    prop_assert_eq!(comps.len(), 1, "{:?} -> {:?}", name, comps);
    prop_assert!(
        matches!(comps[0], Component::Normal(c) if c == name),
        "{:?}",
        name
    );
    prop_assert!(!name.contains(['/', '\\', '\0']), "{:?}", name);
    prop_assert!(!name.chars().any(char::is_control), "{:?}", name);
    prop_assert!(name != "." && name != "..");
    prop_assert!(
        !name.is_empty() && name.len() <= 255,
        "{} bytes",
        name.len()
    );
    Ok(())
}

fn safe_leaf() -> impl Strategy<Value = String> {
    name_strategy().prop_filter("the planner only stores safe names", |n| {
        safe_component(n).is_ok()
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn prop_safe_component_accepts_only_single_normal_components(name in name_strategy()) {
        if let Ok(ok) = safe_component(&name) {
            prop_assert_eq!(ok, name.as_str());
            assert_single_component(&name)?;
        } else {
            let plain = !name.is_empty()
                && name.len() <= 255
                && !name.contains("..")
                && name != "."
                && !name.contains(['/', '\\'])
                && !name.chars().any(char::is_control)
                && name != ".tmp"
                && name != ".lock";
            prop_assert!(!plain, "refused a plain name {:?}", name);
        }
    }

    #[test]
    fn prop_disambiguate_keeps_the_folder_and_changes_the_leaf(
        dir in prop_oneof![Just(String::new()), Just("jmafile/c/2024-05-25".to_owned())],
        leaf in safe_leaf(),
        id in any::<String>(),
    ) {
        let rel = if dir.is_empty() { leaf.clone() } else { format!("{dir}/{leaf}") };
        let out = disambiguate(&rel, &id);
        let (out_dir, out_leaf) = out.rsplit_once('/').unwrap_or(("", &out));
        prop_assert_eq!(out_dir, dir.as_str());
        prop_assert_ne!(out_leaf, leaf.as_str());
        prop_assert!(!out_leaf.contains(['/', '\\', '\0']));
        prop_assert!(out_leaf != "." && out_leaf != "..");
    }
}

/// Found by fuzzing (`fuzz/` target `names`): a leaf with a long extension (or a long name
/// starting with '.') came out of `disambiguate` longer than 255 bytes, so placing the item
/// failed with ENAMETOOLONG.
#[test]
fn prop_disambiguate_stays_within_the_name_limit() {
    let long_ext = format!("a.{}", "b".repeat(253));
    let out = disambiguate(&format!("d/{long_ext}"), "abcdefghij");
    let leaf = out.rsplit_once('/').unwrap().1;
    assert!(leaf.len() <= 255, "{} bytes: {leaf:?}", leaf.len());

    proptest!(config(256), |(leaf in safe_leaf(), id in any::<String>())| {
        let out = disambiguate(&format!("d/{leaf}"), &id);
        let out_leaf = out.rsplit_once('/').unwrap().1;
        assert_single_component(out_leaf)?;
    });
}

// ---------------------------------------------------------------------------------------------
// (b), (c) decoding

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Level::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A body delivered in `chunk`-byte reads. Before every read it measures what the decoder has
/// written to `watch` so far and keeps the peak.
struct Body<'a> {
    data: &'a [u8],
    chunk: usize,
    watch: Option<&'a Path>,
    peak: u64,
}

impl<'a> Body<'a> {
    fn new(data: &'a [u8], chunk: usize) -> Self {
        Body {
            data,
            chunk,
            watch: None,
            peak: 0,
        }
    }
}

fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue; // removed meanwhile
        };
        if meta.is_dir() {
            total += bytes_under(&e.path());
        } else {
            total += meta.len();
        }
    }
    total
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(dir) = self.watch {
            self.peak = self.peak.max(bytes_under(dir));
        }
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn assert_tmp_empty(tmp: &Path) -> Result<(), TestCaseError> {
    let left: Vec<_> = fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    prop_assert!(left.is_empty(), "left behind in the tmp dir: {:?}", left);
    Ok(())
}

fn concat_plan(children: &[Vec<u8>], gzip: bool) -> Plan {
    Plan {
        compression: if gzip {
            Compression::Gzip
        } else {
            Compression::None
        },
        layout: Layout::Concat {
            children: children
                .iter()
                .enumerate()
                .map(|(i, c)| Child {
                    name: format!("c{i}"),
                    length: c.len() as u64,
                })
                .collect(),
        },
    }
}

fn children_of(d: &Decoded, n: usize) -> Vec<Vec<u8>> {
    let Staged::Dir(dir) = &d.staged else {
        panic!("a concat item staged a single file");
    };
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), n);
    (0..n)
        .map(|i| fs::read(dir.path().join(format!("c{i}"))).unwrap())
        .collect()
}

/// How a concat body is spoiled: cut or extended, before compression (the decompressed
/// content is shorter/longer than announced) or after (the gzip stream itself is cut/padded).
#[derive(Debug, Clone)]
enum Spoil {
    CutContent(usize),
    ExtendContent(Vec<u8>),
    CutBody(usize),
    ExtendBody(Vec<u8>),
}

fn spoil_strategy() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        (1usize..64).prop_map(Spoil::CutContent),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Spoil::ExtendContent),
        (1usize..64).prop_map(Spoil::CutBody),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Spoil::ExtendBody),
    ]
}

fn child_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (0usize..3000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn prop_concat_split_yields_exactly_the_children(
        children in prop::collection::vec(child_strategy(), 1..6),
        gzip in any::<bool>(),
        chunk in prop_oneof![Just(usize::MAX), 1usize..700],
    ) {
        let joined: Vec<u8> = children.concat();
        let body = if gzip { gz(&joined) } else { joined.clone() };
        let tmp = tempfile::tempdir().unwrap();
        let plan = concat_plan(&children, gzip);
        let d = decode(Body::new(&body, chunk), &plan, tmp.path(), 1 << 20, &CancellationToken::new());
        let d = match d {
            Ok(d) => d,
            Err(e) => return Err(TestCaseError::fail(format!("refused a good body: {e}"))),
        };
        prop_assert_eq!(children_of(&d, children.len()), children.clone());
        prop_assert_eq!(d.bytes, joined.len() as u64);
        prop_assert_eq!(d.raw_bytes, body.len() as u64);
        prop_assert_eq!(d.files, children.len() as u64);
        drop(d);
        assert_tmp_empty(tmp.path())?;
    }

    #[test]
    fn prop_concat_with_a_wrong_length_is_an_error_and_leaves_nothing(
        children in prop::collection::vec(child_strategy(), 1..6),
        gzip in any::<bool>(),
        spoil in spoil_strategy(),
        chunk in prop_oneof![Just(usize::MAX), 1usize..700],
    ) {
        let mut content: Vec<u8> = children.concat();
        match &spoil {
            Spoil::CutContent(n) | Spoil::CutBody(n) if content.is_empty() || *n > content.len() => {
                return Ok(()); // nothing to cut
            }
            Spoil::CutContent(n) => content.truncate(content.len() - n),
            Spoil::ExtendContent(extra) => content.extend_from_slice(extra),
            _ => {}
        }
        let mut body = if gzip { gz(&content) } else { content };
        match &spoil {
            Spoil::CutBody(n) => body.truncate(body.len().saturating_sub(*n)),
            Spoil::ExtendBody(extra) => body.extend_from_slice(extra),
            _ => {}
        }
        let tmp = tempfile::tempdir().unwrap();
        let plan = concat_plan(&children, gzip);
        let r = decode(Body::new(&body, chunk), &plan, tmp.path(), 1 << 20, &CancellationToken::new());
        prop_assert!(
            matches!(r, Err(DecodeError::Length(_) | DecodeError::Corrupt(_))),
            "expected a length or corrupt error, got {:?}", r.as_ref().map(|d| d.bytes)
        );
        drop(r);
        assert_tmp_empty(tmp.path())?;
    }

    #[test]
    fn prop_gzip_output_over_max_size_is_refused_and_never_written(
        len in 0usize..48_000,
        max_size in 1u64..32_000,
        byte in any::<u8>(),
        noise in any::<bool>(),
        chunk in prop_oneof![Just(usize::MAX), 512usize..8192],
    ) {
        // Mostly compressible (a bomb-like ratio), sometimes not.
        let data: Vec<u8> = if noise {
            (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] ^ byte).collect()
        } else {
            vec![byte; len]
        };
        let body = gz(&data);
        let tmp = tempfile::tempdir().unwrap();
        let plan = Plan {
            compression: Compression::Gzip,
            layout: Layout::Single { length: body.len() as u64 },
        };
        let mut reader = Body::new(&body, chunk);
        reader.watch = Some(tmp.path());
        let r = decode(&mut reader, &plan, tmp.path(), max_size, &CancellationToken::new());
        prop_assert!(reader.peak <= max_size, "{} bytes on disk, cap {}", reader.peak, max_size);
        if data.len() as u64 > max_size {
            prop_assert!(
                matches!(r, Err(DecodeError::TooLarge { limit }) if limit == max_size),
                "{} bytes with cap {}: {:?}", data.len(), max_size, r.as_ref().map(|d| d.bytes)
            );
        } else if let Ok(d) = &r {
            let Staged::File(f) = &d.staged else { panic!("staged a folder") };
            prop_assert_eq!(fs::read(f.path()).unwrap(), data);
        } else if body.len() as u64 <= max_size + max_size / 16 + 64 * 1024 {
            return Err(TestCaseError::fail(format!("refused a body within the cap: {:?}", r.err())));
        }
        drop(r);
        assert_tmp_empty(tmp.path())?;
    }
}

// ---------------------------------------------------------------------------------------------
// (d) list parsing

#[derive(Debug, Clone)]
struct Header {
    length: u64,
    filename: String,
}

#[derive(Debug, Clone)]
struct ItemSpec {
    id: String,
    serial: u64,
    classification: String,
    headers: Vec<Header>,
    /// Unix milliseconds and the offset it is written with, in minutes.
    received_ms: i64,
    offset_min: i16,
    compression: Option<String>,
}

fn item_strategy() -> impl Strategy<Value = ItemSpec> {
    (
        "[a-zA-Z0-9_-]{1,40}",
        any::<u64>(),
        "jmafile\\.[a-z0-9-]{1,12}",
        prop::collection::vec(
            (any::<u64>(), "[A-Za-z0-9_.]{1,60}")
                .prop_map(|(length, filename)| Header { length, filename }),
            1..4,
        ),
        // 2000-01-01 .. 2100-01-01
        946_684_800_000i64..4_102_444_800_000,
        prop_oneof![Just(0i16), Just(540), -720i16..=840],
        prop_oneof![
            Just(None),
            Just(Some("gzip".to_owned())),
            Just(Some("zip".to_owned()))
        ],
    )
        .prop_map(
            |(id, serial, classification, headers, received_ms, offset_min, compression)| {
                ItemSpec {
                    id,
                    serial,
                    classification,
                    headers,
                    received_ms,
                    offset_min,
                    compression,
                }
            },
        )
}

/// Writes `n` as a JSON number, or as a string, possibly padded with spaces.
fn num(n: u64, how: u8) -> Value {
    match how % 3 {
        0 => json!(n),
        1 => json!(n.to_string()),
        _ => json!(format!(" {n} ")),
    }
}

fn rfc3339(ms: i64, offset_min: i16) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    let off = time::UtcOffset::from_whole_seconds(i32::from(offset_min) * 60).unwrap();
    t.to_offset(off)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn item_json(s: &ItemSpec, how: &[u8]) -> Value {
    let h = |i: usize| how.get(i).copied().unwrap_or(0);
    json!({
        "id": s.id,
        "serial": num(s.serial, h(0)),
        "classification": s.classification,
        "headers": s.headers.iter().enumerate().map(|(i, x)| json!({
            "length": num(x.length, h(i + 2)),
            "filename": x.filename,
            "flags": {"product": "Z", "oflag": "C"},
        })).collect::<Vec<_>>(),
        "receivedTime": rfc3339(s.received_ms, s.offset_min),
        "format": "grib2",
        "compression": s.compression,
        "url": format!("https://jmafiledata.api.dmdata.jp/v1/{}", s.id),
        "somethingNew": {"x": h(1)},
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn prop_numbers_as_numbers_or_strings_parse_the_same(
        spec in item_strategy(),
        how in prop::collection::vec(any::<u8>(), 8),
        interval in any::<u64>(),
    ) {
        let as_numbers = item_json(&spec, &[0; 8]);
        let mixed = item_json(&spec, &how);
        let page = json!({
            "status": "ok",
            "items": [as_numbers, mixed],
            "nextPooling": "cG9sbGluZw",
            "nextPoolingInterval": num(interval, how[7]),
        });
        let page: ListPage = serde_json::from_slice(&serde_json::to_vec(&page).unwrap()).unwrap();
        prop_assert_eq!(page.next_pooling_interval, Some(interval));
        let items: Vec<JmaFileItem> = page
            .items
            .iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let want_time = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(spec.received_ms) * 1_000_000,
        )
        .unwrap();
        for item in &items {
            prop_assert_eq!(&item.id, &spec.id);
            prop_assert_eq!(item.serial, spec.serial);
            prop_assert_eq!(&item.classification, &spec.classification);
            prop_assert_eq!(item.received_time, want_time);
            prop_assert_eq!(&item.compression, &spec.compression);
            prop_assert_eq!(item.headers.len(), spec.headers.len());
            for (got, want) in item.headers.iter().zip(&spec.headers) {
                prop_assert_eq!(got.length, want.length);
                prop_assert_eq!(&got.filename, &want.filename);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (e) request budget

#[derive(Debug, Clone)]
enum Op {
    /// Acquire and send at once (the normal path).
    Send,
    /// Acquire and hold the permit unsent.
    Hold,
    /// Send the held permit `i % held`.
    SendHeld(usize),
    /// Drop the held permit `i % held` unsent (refund).
    DropHeld(usize),
    /// Let time pass.
    Wait(u64),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        2 => Just(Op::Hold),
        1 => any::<usize>().prop_map(Op::SendHeld),
        2 => any::<usize>().prop_map(Op::DropHeld),
        2 => (0u64..200_000).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn prop_budget_never_grants_more_than_requests_in_any_window(
        requests in 1u32..8,
        window_ms in 1u64..120_000,
        burst in 0u32..10,
        ops in prop::collection::vec(op_strategy(), 1..60),
    ) {
        let window = Duration::from_millis(window_ms);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // Times (since start) of every permit that was sent, at the time it was granted.
        let sent: Vec<Duration> = rt.block_on(async {
            let budget = Budget::new("prop", requests, window, burst);
            let start = tokio::time::Instant::now();
            let mut held = Vec::new();
            let mut sent = Vec::new();
            for op in &ops {
                match op {
                    Op::Send => {
                        let p = budget.acquire().await;
                        sent.push(start.elapsed());
                        p.sent();
                    }
                    Op::Hold => {
                        let p = budget.acquire().await;
                        held.push((p, start.elapsed()));
                    }
                    Op::SendHeld(i) if !held.is_empty() => {
                        let (p, at) = held.remove(i % held.len());
                        sent.push(at);
                        p.sent();
                    }
                    Op::DropHeld(i) if !held.is_empty() => {
                        drop(held.remove(i % held.len()));
                    }
                    Op::SendHeld(_) | Op::DropHeld(_) => {}
                    Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                }
            }
            // Whatever is still held is sent at the end.
            for (p, at) in held {
                sent.push(at);
                p.sent();
            }
            sent
        });
        let mut sent = sent;
        sent.sort();
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|u| **u < *t + window).count();
            prop_assert!(
                in_window <= requests as usize,
                "{} grants within {:?} from {:?} (limit {}): {:?}",
                in_window, window, t, requests, sent
            );
        }
    }
}
