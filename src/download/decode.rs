//! Body → file(s), synchronously (it runs in `spawn_blocking`, fed from the socket through a
//! bridge). Nothing is buffered whole: bytes flow through the decompressor into temp files in
//! `.tmp/` with a fixed-size buffer, so memory does not grow with the payload. Zip is the one
//! exception on disk (not in memory): its directory sits at the end, so the body is spooled to a
//! temp file first.
//!
//! Every limit is checked on the way: decompressed bytes against `download.max_size` (bomb
//! guard), each concat child against its announced length, and trailing bytes.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use tokio_util::sync::CancellationToken;

pub use super::error::DecodeError;
use super::plan::{Compression, Layout, Plan};
use super::unpack::{MANIFEST, Manifest, Unpacked};
use crate::digest::Hashing;
use crate::state::FileDigest;

const BUF: usize = 256 * 1024;

pub use crate::sink::Staged;

#[derive(Debug)]
pub struct Decoded {
    pub staged: Staged,
    /// Bytes received (compressed).
    pub raw_bytes: u64,
    /// Bytes written (decompressed).
    pub bytes: u64,
    /// Files written.
    pub files: u64,
    /// Things worth a warning that do not make the item wrong (e.g. a dataCount mismatch).
    pub warnings: Vec<Warning>,
    /// Size and SHA-256 of every file written, hashed as the bytes went to disk.
    pub digests: Vec<crate::state::FileDigest>,
}

/// Something about an archive worth one WARN line that does not make it wrong: it is stored
/// as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The tarball's size differs from the list's `fileSize`, but its gzip CRC and tar
    /// structure are sound: the data, not the list, decides.
    SizeMismatch { announced: u64, actual: u64 },
    /// No `telegrams.json` at the tar root, or not a JSON array of objects.
    NoManifest,
    /// `dataCount` matches neither the manifest's entries nor its distinct telegrams (with no
    /// manifest: nor the body files).
    DataCount {
        announced: u64,
        manifest: Option<Manifest>,
        bodies: u64,
    },
}

impl Warning {
    /// Logs the warning about `item` (and counts a size mismatch in
    /// `jma_poller_archive_size_mismatch_total`).
    pub fn report(&self, item: &crate::model::Claimed) {
        let date = item
            .received_ms
            .and_then(crate::model::time::ms_date)
            .map(crate::model::time::fmt_date)
            .unwrap_or_default();
        match self {
            Warning::SizeMismatch { announced, actual } => {
                metrics::counter!(crate::metric::ARCHIVE_SIZE_MISMATCH, "classification" => item.classification.clone()).increment(1);
                tracing::warn!(
                    event = "archive_size_mismatch",
                    id = %item.id,
                    classification = %item.classification,
                    date = %date,
                    announced,
                    actual,
                    "the archive is {actual} bytes, the list announced fileSize {announced}; its gzip CRC and tar structure are sound, so it is stored as received"
                );
            }
            Warning::NoManifest => tracing::warn!(
                event = "archive_no_manifest",
                id = %item.id,
                classification = %item.classification,
                date = %date,
                path = %item.path,
                "{self}; stored as received"
            ),
            Warning::DataCount { .. } => tracing::warn!(
                event = "archive_data_count",
                id = %item.id,
                classification = %item.classification,
                date = %date,
                path = %item.path,
                "{self}; stored as received"
            ),
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::SizeMismatch { announced, actual } => {
                write!(f, "{actual} bytes received, fileSize {announced} announced")
            }
            Warning::NoManifest => write!(f, "no readable {MANIFEST} in the archive"),
            Warning::DataCount {
                announced,
                manifest: Some(m),
                ..
            } => write!(
                f,
                "dataCount is {announced}; {MANIFEST} lists {} entries, {} distinct telegrams",
                m.entries, m.telegrams
            ),
            Warning::DataCount {
                announced, bodies, ..
            } => write!(
                f,
                "dataCount is {announced}; the archive holds {bodies} bodies and no manifest"
            ),
        }
    }
}

/// The warnings an unpacked archive deserves against what the list announced.
fn archive_warnings(
    unpacked: &Unpacked,
    file_size: u64,
    raw_bytes: u64,
    data_count: Option<u64>,
) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if raw_bytes != file_size {
        warnings.push(Warning::SizeMismatch {
            announced: file_size,
            actual: raw_bytes,
        });
    }
    if unpacked.manifest.is_none() {
        warnings.push(Warning::NoManifest);
    }
    if let Some(announced) = data_count {
        // Whether JSON twins count is not documented: either reading is accepted.
        let matches = match unpacked.manifest {
            Some(m) => announced == m.entries || announced == m.telegrams,
            None => announced == unpacked.bodies(),
        };
        if !matches {
            warnings.push(Warning::DataCount {
                announced,
                manifest: unpacked.manifest,
                bodies: unpacked.bodies(),
            });
        }
    }
    warnings
}

/// Marks an error that came from the network side of the body, not from decoding it.
#[derive(Debug)]
struct FromNetwork(String);
impl std::fmt::Display for FromNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for FromNetwork {}

#[derive(Debug)]
struct Shutdown;
impl std::fmt::Display for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shutdown")
    }
}
impl std::error::Error for Shutdown {}

/// Counts raw bytes, caps them, tags network errors, and turns shutdown into an error (the
/// async side ends the stream on shutdown, which must not look like a short body).
struct BodyReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    cap: u64,
    cancel: CancellationToken,
}

impl<R: Read> Read for BodyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other(Shutdown));
        }
        let n = self.inner.read(buf).map_err(|e| {
            let text = match e.get_ref() {
                Some(inner) => crate::api::chain(inner),
                None => e.to_string(),
            };
            io::Error::new(e.kind(), FromNetwork(text))
        })?;
        if n == 0 && self.cancel.is_cancelled() {
            return Err(io::Error::other(Shutdown));
        }
        let total = self.count.get() + n as u64;
        self.count.set(total);
        if total > self.cap {
            return Err(io::Error::other(TooLargeRaw));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct TooLargeRaw;
impl std::fmt::Display for TooLargeRaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raw body over the cap")
    }
}
impl std::error::Error for TooLargeRaw {}

/// Turns shutdown into an error for readers fed from a spooled file (a zip entry, a tarball),
/// which can take a while to decompress and are not watched by [`BodyReader`].
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a CancellationToken,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other(Shutdown));
        }
        self.inner.read(buf)
    }
}

/// Classifies an error met while reading (decoded) body bytes.
fn read_error(e: io::Error, limit: u64) -> DecodeError {
    if let Some(inner) = e.get_ref() {
        if let Some(net) = inner.downcast_ref::<FromNetwork>() {
            return DecodeError::Network(net.0.clone());
        }
        if inner.is::<Shutdown>() {
            return DecodeError::Cancelled;
        }
        if inner.is::<TooLargeRaw>() {
            return DecodeError::TooLarge { limit };
        }
    }
    DecodeError::Corrupt(e.to_string())
}

fn disk(path: &Path) -> impl Fn(io::Error) -> DecodeError + '_ {
    move |source| DecodeError::Disk {
        path: path.to_owned(),
        source,
    }
}

/// Copies up to `limit` bytes; `Ok(None)` means more than `limit` were available.
fn copy_capped(
    r: &mut impl Read,
    w: &mut impl Write,
    limit: u64,
    max_size: u64,
    path: &Path,
    buf: &mut [u8],
) -> Result<Option<u64>, DecodeError> {
    let mut done: u64 = 0;
    loop {
        let want = (limit - done).min(buf.len() as u64) as usize;
        // Ask for one byte beyond the limit to detect an overrun.
        let want = if want == 0 { 1 } else { want };
        let n = match r.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, max_size)),
        };
        if n == 0 {
            return Ok(Some(done));
        }
        if done == limit {
            return Ok(None);
        }
        w.write_all(&buf[..n]).map_err(disk(path))?;
        done += n as u64;
    }
}

/// Decodes `body` per `plan` into `.tmp/` (`tmp_dir`), fsyncing every file it writes.
pub fn decode(
    body: impl Read,
    plan: &Plan,
    tmp_dir: &Path,
    max_size: u64,
    cancel: &CancellationToken,
) -> Result<Decoded, DecodeError> {
    let count = Rc::new(Cell::new(0u64));
    let body = BodyReader {
        inner: body,
        count: count.clone(),
        // Compression can make a body slightly larger than its content; allow for headers.
        cap: max_size.saturating_add(max_size / 16 + 64 * 1024),
        cancel: cancel.clone(),
    };
    let mut buf = vec![0u8; BUF];
    if let Layout::Archive {
        file_size,
        data_count,
        keep_tarball,
    } = &plan.layout
    {
        return decode_archive(
            body,
            count,
            *file_size,
            *data_count,
            keep_tarball.as_deref(),
            tmp_dir,
            max_size,
            &mut buf,
            cancel,
        );
    }
    let (staged, bytes, digests) = match plan.compression {
        Compression::None => write_layout(body, &plan.layout, tmp_dir, max_size, &mut buf)?,
        Compression::Gzip => {
            let gz = MultiGzDecoder::new(BufReader::with_capacity(BUF, body));
            write_layout(gz, &plan.layout, tmp_dir, max_size, &mut buf)?
        }
        Compression::Zip => {
            let mut spool = tempfile::tempfile_in(tmp_dir).map_err(disk(tmp_dir))?;
            let mut body = body;
            match copy_capped(&mut body, &mut spool, u64::MAX, max_size, tmp_dir, &mut buf)? {
                Some(_) => {}
                None => return Err(DecodeError::TooLarge { limit: max_size }),
            }
            spool.rewind().map_err(disk(tmp_dir))?;
            let mut archive = zip::ZipArchive::new(spool)
                .map_err(|e| DecodeError::Corrupt(format!("zip: {e}")))?;
            let mut files = Vec::new();
            for i in 0..archive.len() {
                let entry = archive
                    .by_index_raw(i)
                    .map_err(|e| DecodeError::Corrupt(format!("zip: {e}")))?;
                if !entry.is_dir() {
                    if entry.encrypted() {
                        return Err(DecodeError::Unsupported("zip entry is encrypted".into()));
                    }
                    files.push((i, entry.size()));
                }
            }
            let [(index, size)] = files[..] else {
                return Err(DecodeError::Unsupported(format!(
                    "zip holds {} files; expected exactly one",
                    files.len()
                )));
            };
            if size > max_size {
                return Err(DecodeError::TooLarge { limit: max_size });
            }
            let entry = archive.by_index(index).map_err(|e| match e {
                zip::result::ZipError::UnsupportedArchive(m) => {
                    DecodeError::Unsupported(format!("zip: {m}"))
                }
                other => DecodeError::Corrupt(format!("zip: {other}")),
            })?;
            let entry = Cancellable {
                inner: entry,
                cancel,
            };
            write_layout(entry, &plan.layout, tmp_dir, max_size, &mut buf)?
        }
    };
    let raw_bytes = count.get();
    if let Layout::Single { length } = plan.layout
        && raw_bytes != length
        && bytes != length
    {
        return Err(DecodeError::Length(format!(
            "received {raw_bytes} bytes ({bytes} decompressed); the list announced {length}"
        )));
    }
    let files = match &plan.layout {
        Layout::Concat { children } => children.len() as u64,
        _ => 1,
    };
    Ok(Decoded {
        staged,
        raw_bytes,
        bytes,
        files,
        warnings: Vec::new(),
        digests,
    })
}

/// Spools the tarball, then unpacks it safely into a staging folder, which becomes the
/// archive's folder only when complete. Whether the tarball is whole is decided by its gzip CRC
/// and tar structure (see [`super::unpack`]); a size other than the list's `fileSize` is only a
/// warning, so a sound archive is never fetched again because the list was wrong.
#[allow(clippy::too_many_arguments)]
fn decode_archive(
    mut body: impl Read,
    count: Rc<Cell<u64>>,
    file_size: u64,
    data_count: Option<u64>,
    keep_tarball: Option<&str>,
    tmp_dir: &Path,
    max_size: u64,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<Decoded, DecodeError> {
    let mut spool = tempfile::Builder::new()
        .prefix("item-")
        .tempfile_in(tmp_dir)
        .map_err(disk(tmp_dir))?;
    let spool_path = spool.path().to_owned();
    let mut hashing = crate::digest::Hashing::new(spool.as_file_mut());
    copy_capped(
        &mut body,
        &mut hashing,
        u64::MAX,
        max_size,
        &spool_path,
        buf,
    )?;
    let (_, tarball_sha256) = hashing.finish();
    let raw_bytes = count.get();
    spool.as_file_mut().rewind().map_err(disk(&spool_path))?;
    let dir = tempfile::Builder::new()
        .prefix("item-")
        .tempdir_in(tmp_dir)
        .map_err(disk(tmp_dir))?;
    let gz = MultiGzDecoder::new(BufReader::with_capacity(
        BUF,
        Cancellable {
            inner: spool.as_file(),
            cancel,
        },
    ));
    let unpacked = super::unpack::unpack(gz, dir.path(), max_size).map_err(|e| match e {
        _ if cancel.is_cancelled() => DecodeError::Cancelled,
        // Inside a gzip stream that we already have in full, an I/O error is corruption.
        DecodeError::Disk { path, source } if path == spool_path => {
            DecodeError::Corrupt(source.to_string())
        }
        other => other,
    })?;
    let warnings = archive_warnings(&unpacked, file_size, raw_bytes, data_count);
    let mut bytes = unpacked.bytes;
    let mut digests = unpacked.digests.clone();
    if let Some(name) = keep_tarball {
        digests.push(crate::state::FileDigest {
            name: name.to_owned(),
            bytes: raw_bytes,
            sha256: tarball_sha256,
        });
        spool.as_file().sync_all().map_err(disk(&spool_path))?;
        let dest = dir.path().join(name);
        spool
            .persist_noclobber(&dest)
            .map_err(|e| disk(&dest)(e.error))?;
        bytes += raw_bytes;
    }
    crate::storage::sync_dir(dir.path()).map_err(disk(dir.path()))?;
    Ok(Decoded {
        staged: Staged::Dir(dir),
        raw_bytes,
        bytes,
        files: unpacked.files + u64::from(keep_tarball.is_some()),
        warnings,
        digests,
    })
}

fn write_layout(
    mut r: impl Read,
    layout: &Layout,
    tmp_dir: &Path,
    max_size: u64,
    buf: &mut [u8],
) -> Result<(Staged, u64, Vec<FileDigest>), DecodeError> {
    match layout {
        Layout::Single { .. } => {
            let mut tmp = tempfile::Builder::new()
                .prefix("item-")
                .tempfile_in(tmp_dir)
                .map_err(disk(tmp_dir))?;
            let path = tmp.path().to_owned();
            let mut hashing = Hashing::new(tmp.as_file_mut());
            let n = copy_capped(&mut r, &mut hashing, max_size, max_size, &path, buf)?
                .ok_or(DecodeError::TooLarge { limit: max_size })?;
            let (_, sha256) = hashing.finish();
            tmp.as_file().sync_all().map_err(disk(&path))?;
            let digest = FileDigest {
                name: String::new(),
                bytes: n,
                sha256,
            };
            Ok((Staged::File(tmp), n, vec![digest]))
        }
        Layout::Archive { .. } => Err(DecodeError::Unsupported(
            "an archive is not a single body".into(),
        )),
        Layout::Concat { children } => {
            let dir = tempfile::Builder::new()
                .prefix("item-")
                .tempdir_in(tmp_dir)
                .map_err(disk(tmp_dir))?;
            let mut total = 0;
            let mut digests = Vec::with_capacity(children.len());
            for (i, child) in children.iter().enumerate() {
                let path = dir.path().join(&child.name);
                let f = File::create_new(&path).map_err(disk(&path))?;
                let mut hashing = Hashing::new(&f);
                let mut limited = (&mut r).take(child.length);
                let n = copy_capped(
                    &mut limited,
                    &mut hashing,
                    child.length,
                    max_size,
                    &path,
                    buf,
                )?
                .unwrap_or(child.length);
                let (_, sha256) = hashing.finish();
                digests.push(FileDigest {
                    name: child.name.clone(),
                    bytes: n,
                    sha256,
                });
                if n != child.length {
                    return Err(DecodeError::Length(format!(
                        "body ended inside child {i} ({:?}): {n} of {} bytes",
                        child.name, child.length
                    )));
                }
                f.sync_all().map_err(disk(&path))?;
                total += n;
            }
            let mut extra = [0u8; 1];
            let more = loop {
                match r.read(&mut extra) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(e, max_size)),
                }
            };
            if more > 0 {
                return Err(DecodeError::Length(format!(
                    "body is longer than its {} announced children ({total} bytes)",
                    children.len()
                )));
            }
            crate::storage::sync_dir(dir.path()).map_err(disk(dir.path()))?;
            Ok((Staged::Dir(dir), total, digests))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::plan::Child;
    use flate2::{Compression as Level, write::GzEncoder};
    use tempfile::TempDir;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Level::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn single(c: Compression, length: u64) -> Plan {
        Plan {
            compression: c,
            layout: Layout::Single { length },
        }
    }

    fn run(body: &[u8], plan: &Plan, max: u64) -> (TempDir, Result<Decoded, DecodeError>) {
        let tmp = tempfile::tempdir().unwrap();
        let r = decode(body, plan, tmp.path(), max, &CancellationToken::new());
        (tmp, r)
    }

    fn file_bytes(d: &Decoded) -> Vec<u8> {
        match &d.staged {
            Staged::File(f) => std::fs::read(f.path()).unwrap(),
            Staged::Dir(_) => panic!("expected a file"),
        }
    }

    #[test]
    fn plain_gzip_multimember_and_zip() {
        let data = b"hello grib2 world".repeat(1000);
        let (_t, d) = run(
            &data,
            &single(Compression::None, data.len() as u64),
            1 << 20,
        );
        assert_eq!(file_bytes(&d.unwrap()), data);

        let body = gz(&data);
        let (_t, d) = run(
            &body,
            &single(Compression::Gzip, body.len() as u64),
            1 << 20,
        );
        let d = d.unwrap();
        assert_eq!(
            (d.raw_bytes, d.bytes),
            (body.len() as u64, data.len() as u64)
        );
        assert_eq!(file_bytes(&d), data);

        let mut two = gz(b"first-");
        two.extend(gz(b"second"));
        let (_t, d) = run(&two, &single(Compression::Gzip, two.len() as u64), 1 << 20);
        assert_eq!(
            file_bytes(&d.unwrap()),
            b"first-second",
            "every gzip member is read"
        );

        let z = zip_of(&[("inner.bin", &data)]);
        let (_t, d) = run(&z, &single(Compression::Zip, z.len() as u64), 1 << 20);
        assert_eq!(file_bytes(&d.unwrap()), data);
    }

    #[test]
    fn corrupt_truncated_and_trailing_bodies_are_errors() {
        let data = b"0123456789".repeat(100);
        let mut body = gz(&data);
        let n = body.len();
        body[n - 6] ^= 0xff; // inside the CRC/ISIZE trailer
        let (_t, d) = run(&body, &single(Compression::Gzip, n as u64), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Corrupt(_))), "{d:?}");

        let body = gz(&data);
        let cut = &body[..body.len() / 2];
        let (_t, d) = run(cut, &single(Compression::Gzip, body.len() as u64), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Corrupt(_))), "{d:?}");

        let (_t, d) = run(&data[..500], &single(Compression::None, 1000), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Length(_))), "{d:?}");

        let mut trailing = gz(&data);
        trailing.extend_from_slice(b"garbage!");
        let (_t, d) = run(
            &trailing,
            &single(Compression::Gzip, trailing.len() as u64),
            1 << 20,
        );
        assert!(
            d.is_err(),
            "trailing garbage after the last member is refused"
        );

        let z = zip_of(&[("a", b"1"), ("b", b"2")]);
        let (_t, d) = run(&z, &single(Compression::Zip, z.len() as u64), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Unsupported(_))), "{d:?}");
        let (_t, d) = run(b"not a zip", &single(Compression::Zip, 9), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Corrupt(_))), "{d:?}");
    }

    #[test]
    fn gzip_bomb_is_stopped_at_the_cap() {
        let zeros = vec![0u8; 8 << 20];
        let body = gz(&zeros);
        assert!(body.len() < 64 * 1024);
        let (tmp, d) = run(
            &body,
            &single(Compression::Gzip, body.len() as u64),
            1 << 20,
        );
        assert!(matches!(d, Err(DecodeError::TooLarge { .. })), "{d:?}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    #[test]
    fn concat_is_split_by_announced_lengths() {
        let children = [
            ("a.dbf", vec![1u8; 226]),
            ("a.shp", vec![2u8; 100]),
            ("a.shx", vec![3u8; 100]),
        ];
        let joined: Vec<u8> = children.iter().flat_map(|(_, d)| d.clone()).collect();
        let plan = Plan {
            compression: Compression::Gzip,
            layout: Layout::Concat {
                children: children
                    .iter()
                    .map(|(n, d)| Child {
                        name: n.to_string(),
                        length: d.len() as u64,
                    })
                    .collect(),
            },
        };
        let (_t, d) = run(&gz(&joined), &plan, 1 << 20);
        let d = d.unwrap();
        assert_eq!(d.bytes, 426);
        let Staged::Dir(dir) = &d.staged else {
            panic!()
        };
        for (name, data) in &children {
            assert_eq!(&std::fs::read(dir.path().join(name)).unwrap(), data);
        }

        let (_t, d) = run(&gz(&joined[..400]), &plan, 1 << 20);
        assert!(matches!(d, Err(DecodeError::Length(_))), "{d:?}");
        let mut longer = joined.clone();
        longer.push(9);
        let (_t, d) = run(&gz(&longer), &plan, 1 << 20);
        assert!(matches!(d, Err(DecodeError::Length(_))), "{d:?}");
    }

    #[test]
    fn shutdown_is_not_mistaken_for_a_short_body() {
        let tmp = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let d = decode(
            &b"abc"[..],
            &single(Compression::None, 3),
            tmp.path(),
            1 << 20,
            &cancel,
        );
        assert!(matches!(d, Err(DecodeError::Cancelled)), "{d:?}");
    }

    fn archive_plan(file_size: u64, data_count: Option<u64>) -> Plan {
        Plan {
            compression: Compression::Gzip,
            layout: Layout::Archive {
                file_size,
                data_count,
                keep_tarball: None,
            },
        }
    }

    /// A day as the simulator builds it: 3 XML telegrams with JSON twins, 2 binary ones.
    fn sim_day(data_count: Option<u64>) -> crate::sim::SimArchive {
        crate::sim::archive::build(
            1,
            &crate::sim::ArchiveSpec {
                telegrams: 3,
                data_count,
                ..crate::sim::ArchiveSpec::new(
                    "telegram.earthquake",
                    time::macros::date!(2025 - 02 - 13),
                )
            },
        )
    }

    #[test]
    fn an_archive_is_judged_by_its_data_not_by_file_size() {
        let day = sim_day(None);
        for announced in [day.body.len() as u64, 12345, day.body.len() as u64 + 1] {
            let (_t, d) = run(&day.body, &archive_plan(announced, None), 1 << 20);
            let d = d.unwrap();
            assert_eq!(d.files, 9, "manifest, 3 XML, 3 JSON, 2 binary");
            let want: Vec<Warning> = (announced != day.body.len() as u64)
                .then_some(Warning::SizeMismatch {
                    announced,
                    actual: day.body.len() as u64,
                })
                .into_iter()
                .collect();
            assert_eq!(d.warnings, want);
        }
        // A bad CRC or a cut body is still corrupt, whatever fileSize says.
        let mut bad = day.body.to_vec();
        let n = bad.len();
        bad[n - 6] ^= 0xff;
        let (_t, d) = run(&bad, &archive_plan(n as u64, None), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Corrupt(_))), "{d:?}");
        let cut = &day.body[..day.body.len() - 9];
        let (_t, d) = run(cut, &archive_plan(cut.len() as u64, None), 1 << 20);
        assert!(matches!(d, Err(DecodeError::Corrupt(_))), "{d:?}");
    }

    #[test]
    fn data_count_warns_only_when_it_matches_neither_count() {
        let day = sim_day(None);
        assert_eq!((day.manifest_entries, day.distinct_telegrams), (8, 5));
        for (count, warns) in [(8, false), (5, false), (6, true), (9, true), (0, true)] {
            let (_t, d) = run(
                &day.body,
                &archive_plan(day.file_size, Some(count)),
                1 << 20,
            );
            let d = d.unwrap();
            let warned = d
                .warnings
                .iter()
                .any(|w| matches!(w, Warning::DataCount { .. }));
            assert_eq!(warned, warns, "dataCount {count}: {:?}", d.warnings);
        }
        let text = Warning::DataCount {
            announced: 6,
            manifest: Some(Manifest {
                entries: 8,
                telegrams: 5,
            }),
            bodies: 8,
        }
        .to_string();
        assert_eq!(
            text,
            "dataCount is 6; telegrams.json lists 8 entries, 5 distinct telegrams"
        );
    }
}
