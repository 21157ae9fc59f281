//! Simulated daily archives: one `.tar.gz` per JST day and classification, as the
//! documentation's screenshot and a live client's observations show them (dmdata-api.md §8,
//! §15): `telegrams.json` at the tar root, a JSON array whose entries each name one body by
//! the first 7 characters of their id; XML telegrams `{type}_{author}_{yyyyMMddHHmmssSSS}_{id7}.xml`
//! with JSON twins (own id, own stamp a few ms later, `originalId` pointing at the XML entry);
//! and, in `telegram.earthquake`, binary telegrams with no twin named
//! `IXAC41_RJTD[_{designation}]_{17 digits}_{id7}.bin`. Tars are GNU (long names as `L`
//! records, as the `tar` crate writes them) or PAX with a global header first (as `git
//! archive` and GNU tar's `--format=pax` write them). Hostile variants for the tests.

use std::io::{Read, Write};

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha512};
use time::Date;

use super::data::ExpectedFile;

/// A tarball that must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A member named `../escaped.xml`.
    Traversal,
    /// A member named `/tmp/jma-poller-absolute.xml`.
    Absolute,
    /// A symlink member pointing at `/etc/passwd`.
    Symlink,
    /// A hard link member.
    HardLink,
    /// A member of this many zero bytes (compresses to almost nothing).
    Bomb(u64),
}

/// How the tarball is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TarFormat {
    /// GNU headers; a name over 100 bytes gets a GNU long-name (`L`) record.
    #[default]
    Gnu,
    /// ustar headers after a PAX global header (`g`, a `comment` as `git archive` writes); each
    /// member gets a PAX extended header (`x`) with its `mtime`, and its `path` when long.
    Pax,
}

#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    pub classification: String,
    pub date: Date,
    /// XML telegrams in the day (each gives an XML body and its JSON twin).
    pub telegrams: usize,
    /// Binary (BUFR) telegrams with no JSON twin; `ArchiveSpec::new` puts 2 in
    /// `telegram.earthquake` archives, as seen live.
    pub bin_telegrams: usize,
    /// More members (name, bytes) that are not in the manifest, e.g. with a long name.
    pub extra_members: Vec<(String, Vec<u8>)>,
    pub format: TarFormat,
    pub hostile: Option<Hostile>,
    /// Announce this dataCount instead of the manifest's entry count.
    pub data_count: Option<u64>,
    /// Announce this fileSize instead of the true one.
    pub file_size: Option<u64>,
}

impl ArchiveSpec {
    pub fn new(classification: &str, date: Date) -> ArchiveSpec {
        ArchiveSpec {
            classification: classification.into(),
            date,
            telegrams: 4,
            bin_telegrams: if classification == "telegram.earthquake" {
                2
            } else {
                0
            },
            extra_members: Vec::new(),
            format: TarFormat::Gnu,
            hostile: None,
            data_count: None,
            file_size: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimArchive {
    pub serial: u64,
    pub id: String,
    pub classification: String,
    pub date: Date,
    /// As announced by the list.
    pub data_count: u64,
    /// Entries in `telegrams.json` (XML, JSON twins, binaries).
    pub manifest_entries: u64,
    /// Distinct telegrams: XML and binary ones (a JSON twin is its XML's second form).
    pub distinct_telegrams: u64,
    /// As announced by the list.
    pub file_size: u64,
    pub body: Bytes,
    /// What should land (empty for hostile archives, which must be refused).
    pub expected: Vec<ExpectedFile>,
}

impl SimArchive {
    pub fn date_str(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}",
            self.date.year(),
            u8::from(self.date.month()),
            self.date.day()
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn telegram_type(classification: &str) -> &'static str {
    match classification {
        "eew.forecast" => "VXSE43",
        "eew.warning" => "VXSE44",
        "telegram.earthquake" => "VXSE53",
        "telegram.volcano" => "VFVO50",
        "telegram.weather" => "VPWW54",
        _ => "VZSA50",
    }
}

/// Appends a member the way `format`'s writers do.
fn append(builder: &mut tar::Builder<Vec<u8>>, format: TarFormat, name: &str, data: &[u8]) {
    match format {
        TarFormat::Gnu => {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(MTIME);
            builder
                .append_data(&mut h, name, data)
                .expect("tar to memory");
        }
        TarFormat::Pax => {
            let mut records = pax_record("mtime", &format!("{MTIME}.514000000"));
            if name.len() > 100 {
                records.extend(pax_record("path", name));
            }
            let short = &name.as_bytes()[..name.len().min(100)];
            let mut header_name = b"PaxHeaders.0/".to_vec();
            header_name.extend_from_slice(&short[..short.len().min(87)]);
            append_ustar(builder, &header_name, tar::EntryType::XHeader, &records);
            append_ustar(builder, short, tar::EntryType::Regular, data);
        }
    }
}

const MTIME: u64 = 1_700_000_000;

/// One PAX record, `"{len} {key}={value}\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while rest + len.to_string().len() != len {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

/// A ustar header with a raw name (up to 100 bytes), then `data`.
fn append_ustar(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    data: &[u8],
) {
    let mut h = tar::Header::new_ustar();
    if let Some(ustar) = h.as_ustar_mut() {
        ustar.name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_cksum();
    builder.append(&h, data).expect("tar to memory");
}

/// The global header `git archive` writes first: a `comment` holding a commit id.
fn append_global_header(builder: &mut tar::Builder<Vec<u8>>, rng: &mut fastrand::Rng) {
    let commit: String = (0..20).map(|_| format!("{:02x}", rng.u8(..))).collect();
    append_ustar(
        builder,
        b"pax_global_header",
        tar::EntryType::XGlobalHeader,
        &pax_record("comment", &commit),
    );
}

/// A raw header, so names and types the tar crate would refuse to write can be expressed.
fn append_raw(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: &str,
    data: impl Read,
    size: u64,
) {
    let mut h = tar::Header::new_gnu();
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    builder.append(&h, data).expect("tar to memory");
}

/// One telegram: its manifest entries and bodies.
struct Day {
    manifest: Vec<serde_json::Value>,
    bodies: Vec<(String, Vec<u8>)>,
    distinct: u64,
}

/// A 17-digit UTC stamp (`yyyyMMddHHmmssSSS`) of `t` with milliseconds `ms`.
fn stamp(t: time::OffsetDateTime, ms: u16) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms
    )
}

fn telegram_id(rng: &mut fastrand::Rng) -> String {
    (0..48).map(|_| format!("{:02x}", rng.u8(..))).collect()
}

/// The day's telegrams: XML ones with JSON twins every 7 minutes from midnight JST, and binary
/// ones without twins every 11 minutes from 00:03.
fn telegrams(spec: &ArchiveSpec, rng: &mut fastrand::Rng) -> Day {
    let ty = telegram_type(&spec.classification);
    let start = spec
        .date
        .midnight()
        .assume_offset(time::macros::offset!(+9));
    let entry = |id: &str, ty: &str, t: time::OffsetDateTime| json!({"id": id, "classification": spec.classification, "head": {"type": ty, "author": "RJTD", "time": super::data::rfc3339(t), "test": false}});
    let mut day = Day {
        manifest: Vec::new(),
        bodies: Vec::new(),
        distinct: (spec.telegrams + spec.bin_telegrams) as u64,
    };
    for i in 0..spec.telegrams {
        let id = telegram_id(rng);
        let twin = telegram_id(rng);
        let t = (start + time::Duration::minutes(7 * i as i64)).to_offset(time::UtcOffset::UTC);
        day.bodies.push((
            format!("{ty}_RJTD_{}_{}.xml", stamp(t, 514), &id[..7]),
            format!("<Report><Control><Title>{ty}</Title></Control><Body n=\"{i}\"/></Report>\n")
                .into_bytes(),
        ));
        day.bodies.push((
            format!("{ty}_RJTD_{}_{}.json", stamp(t, 524), &twin[..7]),
            json!({"_originalId": id, "type": ty, "n": i})
                .to_string()
                .into_bytes(),
        ));
        day.manifest.push(entry(&id, ty, t));
        let mut twin_entry = entry(&twin, ty, t);
        twin_entry["originalId"] = json!(id);
        day.manifest.push(twin_entry);
    }
    for i in 0..spec.bin_telegrams {
        let id = telegram_id(rng);
        let t =
            (start + time::Duration::minutes(3 + 11 * i as i64)).to_offset(time::UtcOffset::UTC);
        // The designation segment (a correction, `RRA`) is there on some, not on others.
        let designation = if i % 2 == 0 { "_RRA" } else { "" };
        let mut body = b"BUFR".to_vec();
        body.extend((0..64).map(|_| rng.u8(..)));
        body.extend_from_slice(b"7777");
        day.bodies.push((
            format!(
                "IXAC41_RJTD{designation}_{}_{}.bin",
                stamp(t, 101),
                &id[..7]
            ),
            body,
        ));
        day.manifest.push(entry(&id, "IXAC41", t));
    }
    day
}

pub fn build(serial: u64, spec: &ArchiveSpec) -> SimArchive {
    let mut rng =
        fastrand::Rng::with_seed(serial.wrapping_mul(31) ^ spec.date.to_julian_day() as u64);
    let day = telegrams(spec, &mut rng);
    let manifest_entries = day.manifest.len() as u64;
    let manifest = serde_json::to_vec_pretty(&day.manifest).expect("json to memory");
    let mut bodies = day.bodies;
    bodies.extend(spec.extra_members.iter().cloned());

    let mut builder = tar::Builder::new(Vec::new());
    if spec.format == TarFormat::Pax {
        append_global_header(&mut builder, &mut rng);
    }
    append(&mut builder, spec.format, "telegrams.json", &manifest);
    for (name, data) in &bodies {
        append(&mut builder, spec.format, name, data);
    }
    match spec.hostile {
        Some(Hostile::Traversal) => append_raw(
            &mut builder,
            "../escaped.xml",
            tar::EntryType::Regular,
            "",
            &b"x"[..],
            1,
        ),
        Some(Hostile::Absolute) => append_raw(
            &mut builder,
            "/tmp/jma-poller-absolute.xml",
            tar::EntryType::Regular,
            "",
            &b"x"[..],
            1,
        ),
        Some(Hostile::Symlink) => append_raw(
            &mut builder,
            "link.xml",
            tar::EntryType::Symlink,
            "/etc/passwd",
            std::io::empty(),
            0,
        ),
        Some(Hostile::HardLink) => append_raw(
            &mut builder,
            "hard.xml",
            tar::EntryType::Link,
            "telegrams.json",
            std::io::empty(),
            0,
        ),
        Some(Hostile::Bomb(n)) => append_raw(
            &mut builder,
            "bomb.xml",
            tar::EntryType::Regular,
            "",
            std::io::repeat(0).take(n),
            n,
        ),
        None => {}
    }
    let tar = builder.into_inner().expect("tar to memory");
    let body = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).expect("gzip to memory");
        e.finish().expect("gzip to memory")
    };
    let date = format!(
        "{:04}-{:02}-{:02}",
        spec.date.year(),
        u8::from(spec.date.month()),
        spec.date.day()
    );
    let dir = format!("archive/{}/{date}", spec.classification);
    let expected = if spec.hostile.is_some() {
        Vec::new()
    } else {
        std::iter::once(("telegrams.json".to_owned(), manifest))
            .chain(bodies)
            .map(|(name, data)| ExpectedFile {
                rel_path: format!("{dir}/{name}"),
                bytes: Bytes::from(data),
            })
            .collect()
    };
    SimArchive {
        serial,
        id: hex(&Sha512::digest(&body)[..16]),
        classification: spec.classification.clone(),
        date: spec.date,
        data_count: spec.data_count.unwrap_or(manifest_entries),
        manifest_entries,
        distinct_telegrams: day.distinct,
        file_size: spec.file_size.unwrap_or(body.len() as u64),
        body: Bytes::from(body),
        expected,
    }
}
