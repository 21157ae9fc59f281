//! Simulated JmaFile items: names, headers and bodies (plain, gzip, zip, concat) true to the
//! provider's catalog ([`crate::catalog`]), plus what each must become on disk, computed here
//! independently of the daemon's own code so tests compare two implementations of the
//! documented layout.
//!
//! Every item carries a real classification ↔ data identifier pair and a file name built from
//! the catalog's pattern for it (placeholders filled: UTC time stamps, numbers, codes). A spec
//! without a type gets a catalog product that fits its kind (gzip: the radar products; plain:
//! the many uncompressed GRIB2/BUFR ones; concat of 3: the shapefiles; other concat: the AMeDAS
//! correction bundle `Z__C_COMP_…_OBS_AMDSCC_0XX.tar.gz`). No real file name ends in `.zip`,
//! so zip items appear only when asked for: [`Kind::Zip`] in a spec, or
//! [`super::SimConfig::zip_items`] for the random mixes. A concat item's `headers[0].length` is
//! the size of what was received, the compressed size for a `.tar.gz` (as the docs' diagram
//! shows).

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use time::OffsetDateTime;

use crate::catalog::{Children, FilePattern, Fill, Pattern, Product};

/// How an item's body is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Uncompressed (`compression: null`), e.g. a soil-water-index GRIB2.
    Plain,
    /// `compression: gzip`, name ending `.bin.gz` (radar products arrive like this).
    Gzip,
    /// `compression: zip`, one entry.
    Zip,
    /// `format: concat` from a `.tar.gz`: children concatenated, then gzipped.
    Concat { children: usize },
    /// `format: concat` from a plain `.tar`: children concatenated, uncompressed.
    ConcatPlain { children: usize },
}

/// What to add to the simulator. Defaults give a small gzip radar item received now.
#[derive(Debug, Clone)]
pub struct ItemSpec {
    pub kind: Kind,
    /// Content bytes (per child for concat).
    pub size: usize,
    /// None: the catalog's classification for the type.
    pub classification: Option<String>,
    /// HEADER_VALUES, matched by the `type` filter: a catalog identifier (its placeholders,
    /// if written as in the catalog, are filled). None: a catalog product fitting `kind`.
    pub type_name: Option<String>,
    pub received: Option<OffsetDateTime>,
    /// Replaces `headers[0].filename` (hostile-name tests).
    pub filename: Option<String>,
    /// Replaces the children's file names.
    pub child_names: Option<Vec<String>>,
    /// Serve the body under this origin instead of the simulator's (untrusted-host tests).
    pub url_origin: Option<String>,
    /// Serve exactly this JSON as the list entry (malformed-entry tests).
    pub raw_entry: Option<Value>,
    /// Announce this `headers[0].length` instead of the true one.
    pub announced_length: Option<u64>,
    /// Announce this serial instead of the real one (an upstream oddity).
    pub announced_serial: Option<u64>,
    /// Leave these fields out of the list entry (`receivedTime`, `format`: the oldest
    /// official types had neither).
    pub omit_fields: Vec<String>,
}

impl Default for ItemSpec {
    fn default() -> Self {
        ItemSpec {
            kind: Kind::Gzip,
            size: 4096,
            classification: None,
            type_name: None,
            received: None,
            filename: None,
            child_names: None,
            url_origin: None,
            raw_entry: None,
            announced_length: None,
            announced_serial: None,
            omit_fields: Vec::new(),
        }
    }
}

/// A file the daemon should produce: path relative to the data dir, and its bytes.
#[derive(Debug, Clone)]
pub struct ExpectedFile {
    pub rel_path: String,
    pub bytes: Bytes,
}

/// An item as the simulator holds it.
#[derive(Debug, Clone)]
pub struct SimItem {
    pub serial: u64,
    pub id: String,
    pub classification: String,
    pub type_name: String,
    pub received: OffsetDateTime,
    pub format: String,
    pub compression: Option<&'static str>,
    /// headers[] as served.
    pub headers: Vec<Value>,
    /// The body as served (compressed as announced).
    pub body: Bytes,
    pub url_origin: Option<String>,
    pub raw_entry: Option<Value>,
    pub announced_serial: Option<u64>,
    /// Fields left out of the list entry.
    pub omit_fields: Vec<String>,
    /// What should land on disk (empty for items that must be refused).
    pub expected: Vec<ExpectedFile>,
}

impl SimItem {
    pub fn filename(&self) -> &str {
        self.headers[0]["filename"].as_str().unwrap_or("")
    }
}

/// Pseudo-random content, part noise and part runs, so gzip has something to do.
pub fn content(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let run = rng.usize(16..512).min(size - out.len());
        if rng.bool() {
            let b = rng.u8(..);
            out.extend(std::iter::repeat_n(b, run));
        } else {
            out.extend((0..run).map(|_| rng.u8(..)));
        }
    }
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

fn zip_one(name: &str, data: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(data.len() as u64 >= u32::MAX as u64);
    w.start_file(name, opts).expect("zip to memory");
    w.write_all(data).expect("zip to memory");
    w.finish().expect("zip to memory").into_inner()
}

/// The id the API would give: base64url (no padding) of SHA-512 of the served bytes.
pub fn id_of(body: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha512::digest(body))
}

pub(super) fn stamp14(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[allow(clippy::too_many_arguments)] // one per documented field
pub(super) fn header(
    t: OffsetDateTime,
    author: &str,
    format: &str,
    length: u64,
    filename: &str,
    type_name: &str,
    alt_flags: bool,
) -> Value {
    let flags = if alt_flags {
        json!({"product": "Z", "originator": "C"})
    } else {
        json!({"product": "Z", "oflag": "C"})
    };
    json!({
        "time": rfc3339(t),
        "flags": flags,
        "author": author,
        "format": format,
        "length": length,
        "values": type_name.split('_').collect::<Vec<_>>(),
        "filename": filename,
    })
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Layout the daemon promises: `jmafile/{classification}/{UTC date}/{name}`.
pub(super) fn rel(classification: &str, received: OffsetDateTime, leaf: &str) -> String {
    let d = received.to_offset(time::UtcOffset::UTC).date();
    format!(
        "jmafile/{classification}/{:04}-{:02}-{:02}/{leaf}",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// What a catalog product offers the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One gzip-compressed file (`…_grib2.bin.gz`).
    Gzip,
    /// One uncompressed file.
    Plain,
    /// A tar.gz of named children (shapefiles).
    Named,
    /// A JMBSC bundle of single files.
    Bundle,
}

/// A real (product, identifier, file pattern) the simulator can name items after.
#[derive(Debug)]
struct Candidate {
    product: &'static Product,
    id: &'static Pattern,
    file: &'static FilePattern,
    shape: Shape,
}

/// Every nameable catalog product, once: a file pattern paired with the row's identifier it
/// names (a bundle only if the catalog knows its members).
fn candidates() -> &'static [Candidate] {
    static ALL: std::sync::OnceLock<Vec<Candidate>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let catalog = crate::catalog::get();
        let sample = Fill {
            time: OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
            seq: 1,
            count: 3,
            code: 1,
        };
        let mut out = Vec::new();
        for product in &catalog.products {
            for file in &product.files {
                let Some(id) = product
                    .identifiers
                    .iter()
                    .find(|i| file.core.matches(&i.fill(&sample)))
                else {
                    continue;
                };
                let shape = match &file.children {
                    Children::None if file.compression().is_some() => Shape::Gzip,
                    Children::None => Shape::Plain,
                    Children::Named { exts, .. } if exts.len() == 3 => Shape::Named,
                    Children::Named { .. } => continue,
                    Children::Bundle { .. } => {
                        if catalog
                            .bundle_members(&product.classification, file)
                            .is_empty()
                        {
                            continue;
                        }
                        Shape::Bundle
                    }
                };
                out.push(Candidate {
                    product,
                    id,
                    file,
                    shape,
                });
            }
        }
        out
    })
}

/// How an item is named: its classification, identifier, `headers[0]` and its children.
#[derive(Debug, Clone)]
pub(super) struct Naming {
    pub classification: String,
    pub type_name: String,
    /// `RJTD`, or `COMP` for bundles.
    pub author: String,
    pub filename: String,
    /// `headers[0].format` of a single file (`grib2`, `bufr4`, `png` …).
    pub format: String,
    /// Each concat child: (file name, format, identifier).
    pub children: Vec<(String, String, String)>,
}

/// `grib2.bin.gz` → `grib2`; `image.png` → `png`.
fn format_of(tail: &str) -> String {
    let mut parts = tail.split('.');
    let first = parts.next().unwrap_or_default();
    if first == "image" {
        parts.next().unwrap_or("png").to_owned()
    } else {
        first.to_owned()
    }
}

/// Names an item of `kind` (with `children` for concat) after the catalog: the given type, or
/// a product fitting the kind chosen by `seed`.
pub(super) fn naming(
    kind: Kind,
    classification: Option<&str>,
    type_name: Option<&str>,
    nominal: OffsetDateTime,
    seed: u64,
) -> Naming {
    let catalog = crate::catalog::get();
    let fill = Fill {
        time: nominal,
        seq: (seed % 97) as u32,
        count: match kind {
            Kind::Concat { children } | Kind::ConcatPlain { children } => children as u32,
            _ => 1,
        },
        code: (seed % 1000) as u32,
    };
    let (product, identifier, file) = match type_name {
        Some(t) => {
            // A type written as in the catalog (`OBS_AMDS_Rjp_N#`) is filled in.
            let concrete = catalog
                .pairs()
                .find(|(_, p)| p.text() == t && p.has_placeholders())
                .map_or_else(|| t.to_owned(), |(_, p)| p.fill(&fill));
            let product = catalog.exact(&concrete).map(|(p, _)| p);
            let file = catalog.file_for(&concrete).map(|(_, f)| f);
            (product, concrete, file)
        }
        None => {
            let shape = match kind {
                Kind::Gzip => Shape::Gzip,
                Kind::Plain | Kind::Zip => Shape::Plain,
                Kind::Concat { children: 3 } | Kind::ConcatPlain { children: 3 } => Shape::Named,
                Kind::Concat { .. } | Kind::ConcatPlain { .. } => Shape::Bundle,
            };
            let fitting: Vec<&Candidate> =
                candidates().iter().filter(|c| c.shape == shape).collect();
            match fitting.get((seed as usize) % fitting.len().max(1)) {
                Some(c) => (Some(c.product), c.id.fill(&fill), Some(c.file)),
                None => (None, "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL".to_owned(), None),
            }
        }
    };
    let classification = classification
        .map(str::to_owned)
        .or_else(|| product.map(|p| p.classification.clone()))
        .unwrap_or_else(|| "jmafile.unknown".to_owned());
    let ts = stamp14(nominal);
    let mut naming = Naming {
        classification,
        type_name: identifier.clone(),
        author: file.map_or("RJTD", |f| f.author.as_str()).to_owned(),
        filename: String::new(),
        format: file.map_or("grib2".to_owned(), |f| format_of(&f.tail)),
        children: Vec::new(),
    };
    let single = file.filter(|f| !f.is_concat()).map_or_else(
        || format!("Z__C_RJTD_{ts}_{identifier}_grib2.bin"),
        |f| f.name(&identifier, &fill),
    );
    let plain = single.strip_suffix(".gz").unwrap_or(&single).to_owned();
    match kind {
        Kind::Gzip => naming.filename = format!("{plain}.gz"),
        Kind::Plain => naming.filename = plain,
        Kind::Zip => naming.filename = format!("{plain}.zip"),
        Kind::Concat { children } | Kind::ConcatPlain { children } => {
            let gz = matches!(kind, Kind::Concat { .. });
            let concat_file = file.filter(|f| f.is_concat());
            let parent = concat_file.map_or_else(
                || format!("Z__C_RJTD_{ts}_{identifier}_shape.tar.gz"),
                |f| f.name(&identifier, &fill),
            );
            let parent = if gz {
                parent
            } else {
                parent.strip_suffix(".gz").unwrap_or(&parent).to_owned()
            };
            let stem = parent
                .strip_suffix(".tar.gz")
                .or_else(|| parent.strip_suffix(".tar"))
                .unwrap_or(&parent)
                .to_owned();
            naming.children = match concat_file.map(|f| &f.children) {
                Some(Children::Bundle { .. }) => {
                    let member = concat_file
                        .map(|f| catalog.bundle_members(&naming.classification, f))
                        .and_then(|m| m.first().copied());
                    (0..children)
                        .map(|i| bundle_child(member, &identifier, nominal, i, &fill))
                        .collect()
                }
                _ => {
                    let exts: Vec<String> = match concat_file.map(|f| &f.children) {
                        Some(Children::Named { exts, .. }) => exts.clone(),
                        _ => vec!["dbf".into(), "shp".into(), "shx".into()],
                    };
                    (0..children)
                        .map(|i| {
                            let ext = &exts[i % exts.len()];
                            let name = if i < exts.len() {
                                format!("{stem}.{ext}")
                            } else {
                                format!("{stem}_{i:02}.{ext}")
                            };
                            (name, ext.clone(), identifier.clone())
                        })
                        .collect()
                }
            };
            naming.filename = parent;
            naming.format = "concat".to_owned();
        }
    }
    naming
}

/// Child `i` of a bundle: one of its member files, observations 10 minutes apart (two per
/// time, `N1`/`N2`), so the names stay distinct.
fn bundle_child(
    member: Option<&FilePattern>,
    bundle_id: &str,
    nominal: OffsetDateTime,
    i: usize,
    fill: &Fill,
) -> (String, String, String) {
    let at = Fill {
        time: nominal - time::Duration::minutes(10 * (i / 2) as i64),
        seq: (i % 2) as u32,
        ..*fill
    };
    match member {
        Some(m) => {
            let id = m.core.fill(&at);
            (m.name(&id, &at), format_of(&m.tail), id)
        }
        None => {
            let id = format!("{bundle_id}_{i:02}");
            (
                format!("Z__C_RJTD_{}_{id}_bufr4.bin", stamp14(at.time)),
                "bufr4".into(),
                id,
            )
        }
    }
}

/// Size of a plain tar of files of these lengths: a 512-byte header per member, data padded
/// to 512, two zero blocks at the end (what JMA sent, for a `.tar` concat source).
fn tar_size(lengths: impl Iterator<Item = u64>) -> u64 {
    lengths.map(|l| 512 + l.div_ceil(512) * 512).sum::<u64>() + 1024
}

/// Builds an item (everything but its serial-dependent id is derived from `seed`).
pub fn build(serial: u64, spec: &ItemSpec, now: OffsetDateTime) -> SimItem {
    let received = spec.received.unwrap_or(now);
    let nominal = received - time::Duration::seconds(30);
    let alt_flags = serial.is_multiple_of(3);
    let seed = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ spec.size as u64;
    let names = naming(
        spec.kind,
        spec.classification.as_deref(),
        spec.type_name.as_deref(),
        nominal,
        serial,
    );
    let (format, compression, headers, body, expected) = match spec.kind {
        Kind::Plain | Kind::Gzip | Kind::Zip => {
            let data = content(seed, spec.size);
            let filename = spec.filename.clone().unwrap_or(names.filename.clone());
            let (compression, body) = match spec.kind {
                Kind::Plain => (None, data.clone()),
                Kind::Gzip => (Some("gzip"), gzip(&data)),
                _ => {
                    let inner = filename.strip_suffix(".zip").unwrap_or(&filename);
                    (Some("zip"), zip_one(inner, &data))
                }
            };
            let leaf = match compression {
                Some("gzip") => filename.strip_suffix(".gz").unwrap_or(&filename),
                Some("zip") => filename.strip_suffix(".zip").unwrap_or(&filename),
                _ => &filename,
            }
            .to_owned();
            let length = spec.announced_length.unwrap_or(body.len() as u64);
            let headers = vec![header(
                nominal,
                &names.author,
                &names.format,
                length,
                &filename,
                &names.type_name,
                alt_flags,
            )];
            let expected = vec![ExpectedFile {
                rel_path: rel(&names.classification, received, &leaf),
                bytes: Bytes::from(data),
            }];
            (names.format.clone(), compression, headers, body, expected)
        }
        Kind::Concat { .. } | Kind::ConcatPlain { .. } => {
            let gz = matches!(spec.kind, Kind::Concat { .. });
            let mut children = names.children.clone();
            if let Some(custom) = &spec.child_names {
                for (child, name) in children.iter_mut().zip(custom) {
                    child.0 = name.clone();
                }
            }
            let parts: Vec<Vec<u8>> = (0..children.len())
                .map(|i| content(seed + i as u64, spec.size + i * 7))
                .collect();
            let joined: Vec<u8> = parts.concat();
            let body = if gz { gzip(&joined) } else { joined.clone() };
            let parent = spec.filename.clone().unwrap_or(names.filename.clone());
            let folder = parent
                .strip_suffix(".tar.gz")
                .or_else(|| parent.strip_suffix(".tgz"))
                .or_else(|| parent.strip_suffix(".tar"))
                .unwrap_or(&parent)
                .to_owned();
            // The received file: the tar.gz as served (compressed), or the plain tar.
            let received_len = if gz {
                body.len() as u64
            } else {
                tar_size(parts.iter().map(|p| p.len() as u64))
            };
            let parent_len = spec.announced_length.unwrap_or(received_len);
            let mut headers = vec![header(
                nominal,
                &names.author,
                "concat",
                parent_len,
                &parent,
                &names.type_name,
                alt_flags,
            )];
            let mut expected = Vec::new();
            for ((name, format, id), data) in children.iter().zip(&parts) {
                headers.push(header(
                    nominal,
                    "RJTD",
                    format,
                    data.len() as u64,
                    name,
                    id,
                    alt_flags,
                ));
                expected.push(ExpectedFile {
                    rel_path: format!("{}/{name}", rel(&names.classification, received, &folder)),
                    bytes: Bytes::from(data.clone()),
                });
            }
            (
                "concat".to_owned(),
                gz.then_some("gzip"),
                headers,
                body,
                expected,
            )
        }
    };
    SimItem {
        serial,
        id: id_of(&body),
        classification: names.classification,
        type_name: names.type_name,
        received,
        format,
        compression,
        headers,
        body: Bytes::from(body),
        url_origin: spec.url_origin.clone(),
        raw_entry: spec.raw_entry.clone(),
        announced_serial: spec.announced_serial,
        omit_fields: spec.omit_fields.clone(),
        expected,
    }
}

/// A varied mix for demos and soak runs: catalog products, mostly gzip radar and plain GRIB2 or
/// BUFR, some shapefile and bundle concat items; zip only with `zip` (no real name ends in
/// `.zip`).
pub fn random_spec(rng: &mut fastrand::Rng, zip: bool) -> ItemSpec {
    let kind = match rng.u8(..10) {
        0..=3 => Kind::Gzip,
        4..=6 => Kind::Plain,
        7 if zip => Kind::Zip,
        7 => Kind::Plain,
        _ => Kind::Concat {
            children: rng.usize(2..=6),
        },
    };
    ItemSpec {
        kind,
        size: rng.usize(1024..64 * 1024),
        ..ItemSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: Kind, serial: u64) -> SimItem {
        build(
            serial,
            &ItemSpec {
                kind,
                size: 1000,
                ..ItemSpec::default()
            },
            time::macros::datetime!(2026-11-24 10:54:31 UTC),
        )
    }

    /// Every item the simulator makes carries a catalog pair and a catalog file name.
    #[test]
    fn items_follow_the_catalog() {
        let catalog = crate::catalog::get();
        for serial in 1..60 {
            for kind in [
                Kind::Gzip,
                Kind::Plain,
                Kind::Concat { children: 3 },
                Kind::Concat { children: 5 },
            ] {
                let it = item(kind, serial);
                let (product, _) = catalog
                    .exact(&it.type_name)
                    .unwrap_or_else(|| panic!("{} is no catalog identifier", it.type_name));
                assert_eq!(product.classification, it.classification);
                let (_, file) = catalog
                    .file_for(&it.type_name)
                    .unwrap_or_else(|| panic!("no file pattern for {}", it.type_name));
                let tail = it
                    .filename()
                    .strip_prefix(&format!(
                        "Z__C_{}_20261124105401_{}_",
                        file.author, it.type_name
                    ))
                    .unwrap_or_else(|| panic!("{} vs {}", it.filename(), file.text));
                assert!(
                    Pattern::parse(&file.tail).matches(tail),
                    "{} vs {}",
                    it.filename(),
                    file.text
                );
                assert_eq!(
                    crate::api::models::identifier_from_name(it.filename()).as_deref(),
                    Some(it.type_name.as_str()),
                    "{}",
                    it.filename()
                );
                let values: Vec<&str> = it.headers[0]["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(values.join("_"), it.type_name);
                assert!(!it.filename().ends_with(".zip"));
                assert!(it.filename().contains("_20261124105401_"), "UTC stamp");
            }
        }
    }

    #[test]
    fn concat_parents_announce_the_received_size() {
        let it = item(Kind::Concat { children: 3 }, 7);
        assert!(
            it.filename().ends_with("_shape.tar.gz"),
            "{}",
            it.filename()
        );
        assert_eq!(
            it.headers[0]["length"].as_u64(),
            Some(it.body.len() as u64),
            "the compressed size, as in the docs' diagram"
        );
        let names: Vec<&str> = it.headers[1..]
            .iter()
            .map(|h| h["filename"].as_str().unwrap())
            .collect();
        let stem = it.filename().strip_suffix(".tar.gz").unwrap();
        assert_eq!(
            names,
            vec![
                format!("{stem}.dbf"),
                format!("{stem}.shp"),
                format!("{stem}.shx")
            ]
        );
        let bundle = item(Kind::Concat { children: 4 }, 7);
        assert!(
            bundle
                .filename()
                .starts_with("Z__C_COMP_20261124105401_OBS_AMDSCC_004.tar.gz"),
            "{}",
            bundle.filename()
        );
        assert_eq!(bundle.headers[0]["author"], "COMP");
        let children: Vec<&str> = bundle.headers[1..]
            .iter()
            .map(|h| h["filename"].as_str().unwrap())
            .collect();
        assert_eq!(children.len(), 4);
        let unique: std::collections::HashSet<_> = children.iter().collect();
        assert_eq!(unique.len(), 4, "distinct child names: {children:?}");
        for c in &children {
            assert!(c.contains("_OBS_AMDSCC_Rjp_N"), "{c}");
            assert!(c.ends_with("_bufr4.bin"), "{c}");
        }
        let plain = item(Kind::ConcatPlain { children: 3 }, 7);
        assert!(plain.filename().ends_with("_shape.tar"));
        let lens: u64 = plain.headers[1..]
            .iter()
            .map(|h| h["length"].as_u64().unwrap())
            .sum();
        assert!(
            plain.headers[0]["length"].as_u64().unwrap() > lens,
            "a tar is bigger"
        );
    }

    #[test]
    fn types_written_as_in_the_catalog_are_filled() {
        let it = build(
            1,
            &ItemSpec {
                kind: Kind::Plain,
                type_name: Some("OBS_AMDS_Rjp_N#".into()),
                ..ItemSpec::default()
            },
            time::macros::datetime!(2026-11-24 10:54:31 UTC),
        );
        assert!(
            it.type_name.starts_with("OBS_AMDS_Rjp_N"),
            "{}",
            it.type_name
        );
        assert_eq!(it.classification, "jmafile.obs-amds");
        assert!(it.filename().ends_with("_bufr4.bin"), "{}", it.filename());
        assert_eq!(it.headers[0]["format"], "bufr4");
        let radar = item(Kind::Gzip, 3);
        assert!(
            radar.type_name.starts_with("RDR_GPV_"),
            "{}",
            radar.type_name
        );
        assert!(radar.filename().ends_with("_grib2.bin.gz"));
    }
}
