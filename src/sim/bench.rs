//! Helpers for the benchmark suite (`benches/perf.rs`): items far larger than the tests use,
//! whose bodies are built once (streamed through a fast gzip, optionally cached on disk by the
//! caller) and then served by any number of simulators without rebuilding them.
//!
//! [`Sim::add`] keeps every item's decompressed bytes for the tests to compare with; for a
//! 500 MiB item that is wasteful, so a [`LargeBody`] keeps only the served bytes and the
//! announced lengths, and its [`SimItem::expected`] files carry paths but no bytes (check sizes).

use std::io::{self, Read, Write};
use std::path::Path;

use bytes::Bytes;
use time::OffsetDateTime;

use super::data::{ExpectedFile, Kind, SimItem, header, id_of, naming, rel};
use super::{Sim, lock};

/// A prebuilt body: what the simulator serves, and the decompressed length of each file in it.
#[derive(Debug, Clone)]
pub struct LargeBody {
    /// `Kind::Gzip`, `Kind::Plain`, `Kind::Concat` or `Kind::ConcatPlain`.
    pub kind: Kind,
    pub body: Bytes,
    /// One length per output file (one for a single file, one per child for concat).
    pub lengths: Vec<u64>,
}

impl LargeBody {
    /// Decompressed bytes in all.
    pub fn total(&self) -> u64 {
        self.lengths.iter().sum()
    }
}

/// Writes `size` bytes of GRIB-like content to `out`: alternating runs (16–4096 bytes) of one
/// repeated value and of noise, as radar and analysis grids look after packing; it gzips about
/// 2:1. Noise is filled 8 bytes at a time, so this runs at memory speed.
pub fn grib_like(seed: u64, size: u64, out: &mut impl Write) -> io::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let mut fill = 0usize;
        while fill < buf.len() && (left as usize).saturating_sub(fill) > 0 {
            let room = (buf.len() - fill).min((left as usize) - fill);
            let run = rng.usize(16..4096).min(room);
            let slice = &mut buf[fill..fill + run];
            if rng.bool() {
                slice.fill(rng.u8(..));
            } else {
                rng.fill(slice);
            }
            fill += run;
        }
        out.write_all(&buf[..fill])?;
        left -= fill as u64;
    }
    Ok(())
}

/// Builds a body of `children` files of `child_size` bytes each (one file for `Kind::Gzip` /
/// `Kind::Plain`), gzipped at the fastest level when the kind is compressed.
pub fn build_large(kind: Kind, child_size: u64, seed: u64) -> io::Result<LargeBody> {
    let (children, gz) = match kind {
        Kind::Gzip => (1, true),
        Kind::Plain => (1, false),
        Kind::Concat { children } => (children, true),
        Kind::ConcatPlain { children } => (children, false),
        Kind::Zip => {
            return Err(io::Error::other("large zip items are not supported here"));
        }
    };
    let lengths = vec![child_size; children];
    let total: u64 = lengths.iter().sum();
    let body = if gz {
        let mut e = flate2::write::GzEncoder::new(
            Vec::with_capacity(total as usize / 2 + 1024),
            flate2::Compression::fast(),
        );
        for i in 0..children {
            grib_like(seed + i as u64, child_size, &mut e)?;
        }
        e.finish()?
    } else {
        let mut v = Vec::with_capacity(total as usize);
        for i in 0..children {
            grib_like(seed + i as u64, child_size, &mut v)?;
        }
        v
    };
    Ok(LargeBody {
        kind,
        body: Bytes::from(body),
        lengths,
    })
}

/// [`build_large`], cached in `path` (the body bytes; the lengths follow from the arguments).
/// A cache file of another size or shape is rebuilt.
pub fn load_or_build(path: &Path, kind: Kind, child_size: u64, seed: u64) -> io::Result<LargeBody> {
    let children = match kind {
        Kind::Concat { children } | Kind::ConcatPlain { children } => children,
        _ => 1,
    };
    let meta_path = path.with_extension("meta");
    let meta = format!("{kind:?} {child_size} {seed} v1");
    if let (Ok(m), Ok(mut f)) = (
        std::fs::read_to_string(&meta_path),
        std::fs::File::open(path),
    ) && m == meta
    {
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        return Ok(LargeBody {
            kind,
            body: Bytes::from(v),
            lengths: vec![child_size; children],
        });
    }
    let built = build_large(kind, child_size, seed)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, &built.body)?;
    std::fs::write(&meta_path, meta)?;
    Ok(built)
}

impl Sim {
    /// Adds an item serving `large`'s body (shared, not copied), received now, named like
    /// [`Sim::add`]'s items of the same kind (a catalog product fitting the kind when
    /// `type_name` is None). Its `expected` files have paths and no bytes.
    pub fn add_large(
        &self,
        large: &LargeBody,
        classification: Option<&str>,
        type_name: Option<&str>,
    ) -> SimItem {
        let _publishing = lock(&self.inner.publishing);
        let mut w = lock(&self.inner.world);
        let mut received = OffsetDateTime::now_utc();
        if let Some(last) = w.last_received {
            received = received.max(last + time::Duration::seconds(1));
        }
        w.last_received = Some(received);
        let serial = w.next_serial;
        w.next_serial += 1;
        let nominal = received - time::Duration::seconds(30);
        let children = large.lengths.len();
        let kind = match large.kind {
            Kind::Concat { .. } => Kind::Concat { children },
            Kind::ConcatPlain { .. } => Kind::ConcatPlain { children },
            other => other,
        };
        let names = naming(kind, classification, type_name, nominal, serial);
        let gz = matches!(large.kind, Kind::Gzip | Kind::Concat { .. });
        let (format, headers, expected) = match large.kind {
            Kind::Concat { .. } | Kind::ConcatPlain { .. } => {
                let parent = names.filename.clone();
                let folder = parent
                    .strip_suffix(".tar.gz")
                    .or_else(|| parent.strip_suffix(".tar"))
                    .unwrap_or(&parent)
                    .to_owned();
                let mut headers = vec![header(
                    nominal,
                    &names.author,
                    "concat",
                    large.body.len() as u64,
                    &parent,
                    &names.type_name,
                    false,
                )];
                let mut expected = Vec::new();
                for ((name, format, id), len) in names.children.iter().zip(&large.lengths) {
                    headers.push(header(nominal, "RJTD", format, *len, name, id, false));
                    expected.push(ExpectedFile {
                        rel_path: format!(
                            "{}/{name}",
                            rel(&names.classification, received, &folder)
                        ),
                        bytes: Bytes::new(),
                    });
                }
                ("concat".to_owned(), headers, expected)
            }
            _ => {
                let filename = names.filename.clone();
                let leaf = filename.strip_suffix(".gz").unwrap_or(&filename).to_owned();
                let headers = vec![header(
                    nominal,
                    &names.author,
                    &names.format,
                    large.body.len() as u64,
                    &filename,
                    &names.type_name,
                    false,
                )];
                let expected = vec![ExpectedFile {
                    rel_path: rel(&names.classification, received, &leaf),
                    bytes: Bytes::new(),
                }];
                (names.format.clone(), headers, expected)
            }
        };
        // Ids must be unique per item; the API's is a hash of the body, so salt it with the
        // serial when one body is served as several items.
        let mut id = id_of(&large.body[..large.body.len().min(1 << 16)]);
        id.replace_range(..12, &format!("{serial:012}"));
        let item = SimItem {
            serial,
            id,
            classification: names.classification,
            type_name: names.type_name,
            received,
            format,
            compression: gz.then_some("gzip"),
            headers,
            body: large.body.clone(),
            url_origin: None,
            raw_entry: None,
            announced_serial: None,
            omit_fields: Vec::new(),
            expected,
        };
        w.items.push(item.clone());
        item
    }
}
