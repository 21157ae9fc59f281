//! Simulated JmaFile items: realistic names, headers and bodies (plain, gzip, zip, concat),
//! plus what each must become on disk, computed here independently of the daemon's own code so
//! tests compare two implementations of the documented layout.

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use time::OffsetDateTime;

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
    pub classification: String,
    /// HEADER_VALUES, matched by the `type` filter.
    pub type_name: String,
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
}

impl Default for ItemSpec {
    fn default() -> Self {
        ItemSpec {
            kind: Kind::Gzip,
            size: 4096,
            classification: "jmafile.rdr-nc5min".into(),
            type_name: "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL".into(),
            received: None,
            filename: None,
            child_names: None,
            url_origin: None,
            raw_entry: None,
            announced_length: None,
            announced_serial: None,
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

pub(super) fn header(
    t: OffsetDateTime,
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
        "author": "RJTD",
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

/// Builds an item (everything but its serial-dependent id is derived from `seed`).
pub fn build(serial: u64, spec: &ItemSpec, now: OffsetDateTime) -> SimItem {
    let received = spec.received.unwrap_or(now);
    let nominal = received - time::Duration::seconds(30);
    let base = format!("Z__C_RJTD_{}_{}", stamp14(nominal), spec.type_name);
    let alt_flags = serial.is_multiple_of(3);
    let seed = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ spec.size as u64;
    let (format, compression, headers, body, expected) = match spec.kind {
        Kind::Plain | Kind::Gzip | Kind::Zip => {
            let data = content(seed, spec.size);
            let plain_name = format!("{base}_grib2.bin");
            let (filename, compression, body) = match spec.kind {
                Kind::Plain => (plain_name.clone(), None, data.clone()),
                Kind::Gzip => (format!("{plain_name}.gz"), Some("gzip"), gzip(&data)),
                _ => (
                    format!("{plain_name}.zip"),
                    Some("zip"),
                    zip_one(&plain_name, &data),
                ),
            };
            let filename = spec.filename.clone().unwrap_or(filename);
            let leaf = match compression {
                Some("gzip") => filename.strip_suffix(".gz").unwrap_or(&filename),
                Some("zip") => filename.strip_suffix(".zip").unwrap_or(&filename),
                _ => &filename,
            }
            .to_owned();
            let length = spec.announced_length.unwrap_or(body.len() as u64);
            let headers = vec![header(
                nominal,
                "grib2",
                length,
                &filename,
                &spec.type_name,
                alt_flags,
            )];
            let expected = vec![ExpectedFile {
                rel_path: rel(&spec.classification, received, &leaf),
                bytes: Bytes::from(data),
            }];
            ("grib2".to_owned(), compression, headers, body, expected)
        }
        Kind::Concat { children } | Kind::ConcatPlain { children } => {
            let gz = matches!(spec.kind, Kind::Concat { .. });
            let exts = ["dbf", "shp", "shx", "prj", "cpg"];
            let names: Vec<String> = spec.child_names.clone().unwrap_or_else(|| {
                (0..children)
                    .map(|i| {
                        if children <= exts.len() {
                            format!("{base}_shape.{}", exts[i])
                        } else {
                            format!("{base}_{i:02}.bin")
                        }
                    })
                    .collect()
            });
            let parts: Vec<Vec<u8>> = names
                .iter()
                .enumerate()
                .map(|(i, _)| content(seed + i as u64, spec.size + i * 7))
                .collect();
            let joined: Vec<u8> = parts.concat();
            let body = if gz { gzip(&joined) } else { joined.clone() };
            let parent = if gz {
                format!("{base}_shape.tar.gz")
            } else {
                format!("{base}_shape.tar")
            };
            let parent = spec.filename.clone().unwrap_or(parent);
            let folder = parent
                .strip_suffix(".tar.gz")
                .or_else(|| parent.strip_suffix(".tgz"))
                .or_else(|| parent.strip_suffix(".tar"))
                .unwrap_or(&parent)
                .to_owned();
            let parent_len = spec.announced_length.unwrap_or(joined.len() as u64);
            let mut headers = vec![header(
                nominal,
                "concat",
                parent_len,
                &parent,
                &spec.type_name,
                alt_flags,
            )];
            let mut expected = Vec::new();
            for (name, data) in names.iter().zip(&parts) {
                let ext = name.rsplit('.').next().unwrap_or("bin");
                headers.push(header(
                    nominal,
                    ext,
                    data.len() as u64,
                    name,
                    &spec.type_name,
                    alt_flags,
                ));
                expected.push(ExpectedFile {
                    rel_path: format!("{}/{name}", rel(&spec.classification, received, &folder)),
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
        classification: spec.classification.clone(),
        type_name: spec.type_name.clone(),
        received,
        format,
        compression,
        headers,
        body: Bytes::from(body),
        url_origin: spec.url_origin.clone(),
        raw_entry: spec.raw_entry.clone(),
        announced_serial: spec.announced_serial,
        expected,
    }
}

/// A varied mix for demos and soak runs: mostly small gzip radar, some plain, zip and concat.
pub fn random_spec(rng: &mut fastrand::Rng) -> ItemSpec {
    let products = [
        ("jmafile.rdr-nc5min", "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL"),
        ("jmafile.srf-rrp", "SRF_GPV_Ggis1km_Prr60lv_Aper10min_ANAL"),
        ("jmafile.srf-sw", "SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06"),
        ("jmafile.met-flood", "MET_INF_Flood_River_Shape"),
    ];
    let (classification, type_name) = products[rng.usize(..products.len())];
    let kind = match rng.u8(..10) {
        0..=4 => Kind::Gzip,
        5 | 6 => Kind::Plain,
        7 => Kind::Zip,
        _ => Kind::Concat {
            children: rng.usize(2..=4),
        },
    };
    ItemSpec {
        kind,
        size: rng.usize(1024..64 * 1024),
        classification: classification.into(),
        type_name: type_name.into(),
        ..ItemSpec::default()
    }
}
