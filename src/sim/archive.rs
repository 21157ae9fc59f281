//! Simulated daily archives: one `.tar.gz` per JST day and classification, holding
//! `telegrams.json` and `{type}_{author}_{yyyyMMddHHmmssSSS}_{id7}.{xml,json}` bodies as in the
//! documentation's screenshot, plus hostile variants for the tests.

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

#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    pub classification: String,
    pub date: Date,
    /// Telegrams in the day (each gives an XML body and its JSON twin).
    pub telegrams: usize,
    pub hostile: Option<Hostile>,
    /// Announce this dataCount instead of the true one.
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
    pub data_count: u64,
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

fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    builder
        .append_data(&mut h, name, data)
        .expect("tar to memory");
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

pub fn build(serial: u64, spec: &ArchiveSpec) -> SimArchive {
    let mut rng =
        fastrand::Rng::with_seed(serial.wrapping_mul(31) ^ spec.date.to_julian_day() as u64);
    let ty = telegram_type(&spec.classification);
    let start = spec
        .date
        .midnight()
        .assume_offset(time::macros::offset!(+9));
    let mut manifest = Vec::new();
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..spec.telegrams {
        let id: String = (0..48).map(|_| format!("{:02x}", rng.u8(..))).collect();
        let twin: String = (0..48).map(|_| format!("{:02x}", rng.u8(..))).collect();
        let t = (start + time::Duration::minutes(7 * i as i64)).to_offset(time::UtcOffset::UTC);
        let stamp = |ms: u16| {
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
        };
        let xml_name = format!("{ty}_RJTD_{}_{}.xml", stamp(514), &id[..7]);
        let json_name = format!("{ty}_RJTD_{}_{}.json", stamp(524), &twin[..7]);
        let time_text = super::data::rfc3339(t);
        bodies.push((
            xml_name,
            format!("<Report><Control><Title>{ty}</Title></Control><Body n=\"{i}\"/></Report>\n")
                .into_bytes(),
        ));
        bodies.push((
            json_name,
            json!({"_originalId": id, "type": ty, "n": i})
                .to_string()
                .into_bytes(),
        ));
        manifest.push(json!({"id": id, "classification": spec.classification, "head": {"type": ty, "time": time_text, "test": false}}));
        manifest.push(json!({"id": twin, "originalId": id, "classification": spec.classification, "head": {"type": ty, "time": time_text, "test": false}}));
    }
    let manifest = serde_json::to_vec_pretty(&manifest).expect("json to memory");

    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, "telegrams.json", &manifest);
    for (name, data) in &bodies {
        append(&mut builder, name, data);
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
        data_count: spec.data_count.unwrap_or(2 * spec.telegrams as u64),
        file_size: spec.file_size.unwrap_or(body.len() as u64),
        body: Bytes::from(body),
        expected,
    }
}
