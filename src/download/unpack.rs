//! Safe unpacking of a daily archive (`.tar.gz`) into a fresh staging folder.
//!
//! Nothing from the tarball is trusted. Every member is checked before a byte is written:
//! only regular files and directories are accepted (symlinks, hard links, devices, FIFOs are
//! refused, so nothing can point outside the folder); every path component must be a safe
//! name (no absolute paths, no `..`); duplicate names are refused; and the total unpacked size
//! and the member count are capped, so a decompression bomb stops at the cap. Files are written
//! by this code (never by `tar`'s own unpack), created fresh, and fsynced.
//!
//! Metadata records are read here, not by the `tar` crate (which would read a record of any
//! announced size into memory): GNU long names (`L`) and PAX extended headers (`x`) give the
//! next member its name, which then goes through every check above; GNU long links (`K`) and
//! PAX global headers (`g`, which `git archive` and GNU tar's `--format=pax` write first) are
//! read and dropped. None of them is a member: none is refused for its type or name, none is
//! written out. Each is capped at [`MAX_METADATA`] bytes and counts against the size cap.
//!
//! The structure is checked to the end: a member cut short, metadata that describes no
//! member, a stream that stops without the end-of-archive marker, or anything but zero padding
//! after it is corrupt; so is a bad gzip CRC, as the stream is read to its very end. These
//! checks, not the list's `fileSize`, decide whether a tarball is whole.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::error::DecodeError;
use crate::storage::{safe_component, sync_dir};

/// The manifest every archive carries.
pub const MANIFEST: &str = "telegrams.json";
/// Members per archive; a day of the busiest classification holds a few thousand.
const MAX_ENTRIES: u64 = 500_000;
/// Zero padding accepted after the end-of-archive marker (tar pads to 10 KiB records).
const MAX_TRAILING: u64 = 1 << 20;
/// Largest metadata record read (a long name, a PAX header): real ones hold a path and a few
/// times, well under a kilobyte; a larger one is refused before it is read.
pub const MAX_METADATA: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    /// `telegrams.json` counted, when it is there and is a JSON array of objects.
    pub manifest: Option<Manifest>,
    /// Size and SHA-256 of each member written (name: its path inside the folder).
    pub digests: Vec<crate::state::FileDigest>,
}

/// What `telegrams.json` lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Entries in the array.
    pub entries: u64,
    /// Distinct telegrams: a JSON twin (an entry whose `originalId` names another entry, its
    /// XML source) is counted once with its source.
    pub telegrams: u64,
}

impl Unpacked {
    /// Body files: everything but the manifest.
    pub fn bodies(&self) -> u64 {
        self.files - u64::from(self.manifest.is_some())
    }
}

/// A member's path inside the folder, `/`-separated (members are checked safe: relative, no
/// `..`).
fn member_name(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn refused(member: &str, why: &str) -> DecodeError {
    DecodeError::Refused(format!("tar member {member:?}: {why}"))
}

fn corrupt(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt(format!("tar: {what}"))
}

/// The member's path as safe components (empty for the archive's own root, `.`), or why it
/// is refused.
fn safe_member_path(raw: &Path) -> Result<PathBuf, DecodeError> {
    let shown = raw.display().to_string();
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => {
                let part = part
                    .to_str()
                    .ok_or_else(|| refused(&shown, "name is not UTF-8"))?;
                safe_component(part).map_err(|e| refused(&shown, e.reason))?;
                out.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refused(&shown, "'..' would escape the archive folder"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(&shown, "absolute path"));
            }
        }
    }
    Ok(out)
}

/// Creates `rel`'s parent folders inside `dest` (all ours, all fresh: no link can be on the way).
fn make_parents(dest: &Path, rel: &Path, dirs: &mut BTreeSet<PathBuf>) -> Result<(), DecodeError> {
    let mut cur = dest.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            if dirs.insert(cur.clone()) {
                match fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur.is_dir() => {}
                    Err(e) => return Err(disk(&cur, e)),
                }
            }
        }
    }
    Ok(())
}

fn disk(path: &Path, source: io::Error) -> DecodeError {
    DecodeError::Disk {
        path: path.to_owned(),
        source,
    }
}

/// Remembers whether the stream ended under the tar reader: it takes an end of stream where a
/// header should start for the end of the archive, so a tarball cut at a member boundary (a
/// multi-member gzip cut between members passes its CRCs) would otherwise look whole.
struct EndWatch<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> Read for EndWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended = true;
        }
        Ok(n)
    }
}

/// The metadata record types: they describe the next member (or, `g`, all of them).
fn metadata_kind(kind: EntryType) -> Option<&'static str> {
    if kind.is_gnu_longname() {
        Some("GNU long name")
    } else if kind.is_gnu_longlink() {
        Some("GNU long link")
    } else if kind.is_pax_local_extensions() {
        Some("PAX header")
    } else if kind.is_pax_global_extensions() {
        Some("PAX global header")
    } else {
        None
    }
}

/// Metadata records read since the last member; they apply to the next one.
#[derive(Debug, Default)]
struct Pending {
    gnu_name: Option<Vec<u8>>,
    gnu_link: bool,
    pax: Option<PaxFields>,
}

/// The PAX keys that matter here; the rest (times, owners, xattrs, comments) are dropped.
#[derive(Debug, Default)]
struct PaxFields {
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.gnu_name.is_none() && !self.gnu_link && self.pax.is_none()
    }

    /// Takes in one record; two of a kind for one member are refused, as `tar` refuses them.
    fn add(&mut self, kind: EntryType, what: &str, data: Vec<u8>) -> Result<(), DecodeError> {
        let twice = || corrupt(format!("two {what} records for one member"));
        if kind.is_gnu_longname() {
            if self.gnu_name.is_some() {
                return Err(twice());
            }
            let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            self.gnu_name = Some(data[..end].to_vec());
        } else if kind.is_gnu_longlink() {
            if self.gnu_link {
                return Err(twice());
            }
            self.gnu_link = true;
        } else if kind.is_pax_local_extensions() {
            if self.pax.is_some() {
                return Err(twice());
            }
            self.pax = Some(parse_pax(&data)?);
        }
        Ok(())
    }

    /// The next member's name and announced size, from the records and its own header.
    fn resolve(&mut self, header: &tar::Header) -> Result<(PathBuf, u64), DecodeError> {
        let pending = std::mem::take(self);
        let own = header.path_bytes();
        let shown = String::from_utf8_lossy(&own).into_owned();
        let size = header
            .entry_size()
            .map_err(|e| corrupt(format!("member {shown:?}: {e}")))?;
        let (pax_path, pax_size) = pending.pax.map_or((None, None), |p| (p.path, p.size));
        let name = match (pending.gnu_name, pax_path) {
            (Some(gnu), Some(pax)) if gnu != pax => {
                return Err(refused(&shown, "its GNU long name and PAX path disagree"));
            }
            (Some(long), _) | (None, Some(long)) => long,
            (None, None) => own.into_owned(),
        };
        if pax_size.is_some_and(|s| s != size) {
            // Readers disagree on which size wins, so such a tarball could unpack differently
            // elsewhere than here.
            return Err(refused(&shown, "its PAX size differs from its header's"));
        }
        Ok((PathBuf::from(OsStr::from_bytes(&name)), size))
    }
}

fn parse_pax(data: &[u8]) -> Result<PaxFields, DecodeError> {
    let mut out = PaxFields::default();
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| corrupt(format!("PAX header: {e}")))?;
        match ext.key_bytes() {
            b"path" => out.path = Some(ext.value_bytes().to_vec()),
            b"size" => {
                let size = ext
                    .value()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| corrupt("PAX header: size is not a number"))?;
                out.size = Some(size);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One unpacking: the counts and the bookkeeping of what was created.
struct Unpacker<'a> {
    dest: &'a Path,
    max_bytes: u64,
    out: Unpacked,
    /// Bytes of metadata records read, counted against the cap with the files.
    metadata_bytes: u64,
    dirs: BTreeSet<PathBuf>,
    seen: BTreeSet<PathBuf>,
    buf: Vec<u8>,
}

/// Unpacks the tar stream `tar` (already decompressed) into the empty folder `dest`.
pub fn unpack(tar: impl Read, dest: &Path, max_bytes: u64) -> Result<Unpacked, DecodeError> {
    let mut archive = tar::Archive::new(EndWatch {
        inner: tar,
        ended: false,
    });
    let mut u = Unpacker {
        dest,
        max_bytes,
        out: Unpacked::default(),
        metadata_bytes: 0,
        dirs: BTreeSet::new(),
        seen: BTreeSet::new(),
        buf: vec![0u8; 128 * 1024],
    };
    let mut pending = Pending::default();
    // Raw: metadata records come to us as entries, so their sizes are checked before reading.
    let entries = archive.entries().map_err(corrupt)?.raw(true);
    for (n, entry) in entries.enumerate() {
        if n as u64 >= MAX_ENTRIES {
            return Err(DecodeError::Refused(format!(
                "more than {MAX_ENTRIES} tar members"
            )));
        }
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        match metadata_kind(kind) {
            Some(what) => {
                let data = u.read_metadata(&mut entry, what)?;
                pending.add(kind, what, data)?;
            }
            None => {
                let (raw_path, size) = pending.resolve(entry.header())?;
                u.member(&mut entry, kind, &raw_path, size)?;
            }
        }
    }
    if !pending.is_empty() {
        return Err(corrupt("metadata records at the end describe no member"));
    }
    let rest = archive.into_inner();
    if rest.ended {
        return Err(corrupt(
            "the stream ends without the end-of-archive marker (cut short?)",
        ));
    }
    u.read_to_the_end(rest.inner)?;
    for d in u.dirs.iter().rev() {
        sync_dir(d).map_err(|e| disk(d, e))?;
    }
    u.out.manifest = count_manifest(&dest.join(MANIFEST));
    Ok(u.out)
}

impl Unpacker<'_> {
    fn over_cap(&self, more: u64) -> bool {
        self.out
            .bytes
            .saturating_add(self.metadata_bytes)
            .saturating_add(more)
            > self.max_bytes
    }

    /// Reads a metadata record whole, refusing it before reading if it is too large.
    fn read_metadata(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        what: &str,
    ) -> Result<Vec<u8>, DecodeError> {
        let size = entry.header().entry_size().map_err(corrupt)?;
        if size > MAX_METADATA {
            return Err(DecodeError::Refused(format!(
                "a {what} record of {size} bytes (more than {MAX_METADATA}) in the tar archive"
            )));
        }
        if self.over_cap(size) {
            return Err(DecodeError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| corrupt(format!("{what} record: {e}")))?;
        if data.len() as u64 != size {
            return Err(corrupt(format!("{what} record cut short")));
        }
        self.metadata_bytes += size;
        Ok(data)
    }

    /// Checks one member and writes it if it is a regular file.
    fn member(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        kind: EntryType,
        raw_path: &Path,
        size: u64,
    ) -> Result<(), DecodeError> {
        let shown = raw_path.display().to_string();
        let rel = safe_member_path(raw_path)?;
        if kind.is_dir() {
            // `./`, the archive's own root, is already there.
            if !rel.as_os_str().is_empty() {
                make_parents(self.dest, &rel.join("x"), &mut self.dirs)?;
            }
            return Ok(());
        }
        if !(kind.is_file() || kind == EntryType::Continuous) {
            return Err(refused(&shown, &format!("{} refused", kind_name(kind))));
        }
        if rel.as_os_str().is_empty() {
            return Err(refused(&shown, "empty path"));
        }
        if !self.seen.insert(rel.clone()) {
            return Err(refused(&shown, "duplicate name"));
        }
        if self.over_cap(size) {
            return Err(DecodeError::TooLarge {
                limit: self.max_bytes,
            });
        }
        make_parents(self.dest, &rel, &mut self.dirs)?;
        let written = self.write_file(entry, &rel)?;
        if written != size {
            return Err(corrupt(format!(
                "member {shown:?} cut short: {written} of {size} bytes"
            )));
        }
        self.out.bytes += written;
        self.out.files += 1;
        Ok(())
    }

    /// Copies the member's bytes into a fresh file, counting what actually comes out (the
    /// header can lie), and fsyncs it.
    fn write_file(&mut self, entry: &mut impl Read, rel: &Path) -> Result<u64, DecodeError> {
        let path = self.dest.join(rel);
        let file = File::create_new(&path).map_err(|e| disk(&path, e))?;
        let mut file = crate::digest::Hashing::new(file);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(corrupt(format!("member {}: {e}", rel.display())));
                }
            };
            written += n as u64;
            if self.over_cap(written) {
                return Err(DecodeError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            file.write_all(&self.buf[..n]).map_err(|e| disk(&path, e))?;
        }
        let (bytes, sha256) = file
            .finish_into(|f| f.sync_all())
            .map_err(|e| disk(&path, e))?;
        self.out.digests.push(crate::state::FileDigest {
            name: member_name(rel),
            bytes,
            sha256,
        });
        Ok(written)
    }

    /// The tar reader stops at the end-of-archive marker; read on to the end of the stream so
    /// the gzip trailer (its CRC) is checked too. Only the usual zero padding may follow.
    fn read_to_the_end(&mut self, rest: impl Read) -> Result<(), DecodeError> {
        let mut rest = rest.take(MAX_TRAILING + 1);
        let mut trailing = 0u64;
        loop {
            let n = match rest.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DecodeError::Corrupt(format!(
                        "after the last tar member: {e}"
                    )));
                }
            };
            if self.buf[..n].iter().any(|b| *b != 0) {
                return Err(DecodeError::Refused(
                    "data after the end of the tar archive".into(),
                ));
            }
            trailing += n as u64;
        }
        if trailing > MAX_TRAILING {
            return Err(DecodeError::Refused(
                "more than 1 MiB of padding after the tar archive".into(),
            ));
        }
        Ok(())
    }
}

fn kind_name(kind: EntryType) -> &'static str {
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_hard_link() {
        "hard link"
    } else if kind.is_character_special() || kind.is_block_special() {
        "device node"
    } else if kind.is_fifo() {
        "FIFO"
    } else {
        "not a regular file"
    }
}

/// One `telegrams.json` entry, as far as counting goes.
#[derive(serde::Deserialize)]
struct ManifestEntry {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "originalId")]
    original_id: Option<String>,
}

/// Counts the manifest's entries and distinct telegrams; `None` if it is missing or is not a
/// JSON array of objects.
fn count_manifest(path: &Path) -> Option<Manifest> {
    if !path.is_file() {
        return None;
    }
    let file = File::open(path).ok()?;
    let entries: Vec<ManifestEntry> = serde_json::from_reader(io::BufReader::new(file)).ok()?;
    let ids: HashSet<&str> = entries.iter().filter_map(|e| e.id.as_deref()).collect();
    let twins = entries
        .iter()
        .filter(|e| {
            e.original_id
                .as_deref()
                .is_some_and(|o| ids.contains(o) && e.id.as_deref() != Some(o))
        })
        .count();
    Some(Manifest {
        entries: entries.len() as u64,
        telegrams: (entries.len() - twins) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends one member written raw (header, data, padding), announcing `size` bytes.
    fn raw_member(
        out: &mut Vec<u8>,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: &str,
        size: u64,
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    /// A tar with members written raw, so hostile names and types can be expressed.
    pub fn raw_tar(members: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in members {
            raw_member(&mut out, name, *kind, data, link, data.len() as u64);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn run(tar: &[u8], max: u64) -> (tempfile::TempDir, Result<Unpacked, DecodeError>) {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("stage");
        fs::create_dir(&dest).unwrap();
        let r = unpack(tar, &dest, max);
        (root, r)
    }

    const F: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn a_normal_archive_unpacks_with_its_manifest() {
        let tar = raw_tar(&[
            ("telegrams.json", F, br#"[{"id":"a"},{"id":"b"}]"#, ""),
            (
                "VXSE42_RJTD_20250212150002514_0c1f04f.xml",
                F,
                b"<xml/>",
                "",
            ),
            ("./VXSE42_RJTD_20250212150002524_ea541d5.json", F, b"{}", ""),
        ]);
        let (root, r) = run(&tar, 1 << 20);
        let r = r.unwrap();
        let manifest = Some(Manifest {
            entries: 2,
            telegrams: 2,
        });
        assert_eq!((r.files, r.bodies(), r.manifest), (3, 2, manifest));
        assert_eq!(
            fs::read(
                root.path()
                    .join("stage/VXSE42_RJTD_20250212150002514_0c1f04f.xml")
            )
            .unwrap(),
            b"<xml/>"
        );
    }

    #[test]
    fn hostile_members_are_refused_and_nothing_escapes() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_tar(&[("../escape.xml", F, b"x", "")]), "'..'"),
            (raw_tar(&[("a/../../escape.xml", F, b"x", "")]), "'..'"),
            (raw_tar(&[("/etc/escape.xml", F, b"x", "")]), "absolute"),
            (
                raw_tar(&[("link", tar::EntryType::Symlink, b"", "/etc/passwd")]),
                "symbolic link",
            ),
            (
                raw_tar(&[
                    ("a.xml", F, b"x", ""),
                    ("hard", tar::EntryType::Link, b"", "a.xml"),
                ]),
                "hard link",
            ),
            (raw_tar(&[("dev", tar::EntryType::Char, b"", "")]), "device"),
            (raw_tar(&[("fifo", tar::EntryType::Fifo, b"", "")]), "FIFO"),
            (
                raw_tar(&[("a.xml", F, b"x", ""), ("a.xml", F, b"y", "")]),
                "duplicate",
            ),
        ];
        for (tar, why) in cases {
            let (root, r) = run(&tar, 1 << 20);
            match r {
                Err(DecodeError::Refused(m)) => {
                    assert!(m.contains(why), "{m} should mention {why}")
                }
                other => panic!("{why}: expected a refusal, got {other:?}"),
            }
            let outside: Vec<_> = fs::read_dir(root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                outside,
                vec![std::ffi::OsString::from("stage")],
                "nothing beside the stage"
            );
        }
    }

    #[test]
    fn a_bomb_stops_at_the_cap_even_when_the_header_lies() {
        let zeros = vec![0u8; 4 << 20];
        let (_r, r) = run(&raw_tar(&[("big.xml", F, &zeros, "")]), 1 << 20);
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
        // Many members, each under the cap, together over it.
        let chunk = vec![1u8; 300 << 10];
        let names: Vec<String> = (0..5).map(|i| format!("m{i}.xml")).collect();
        let members: Vec<(&str, tar::EntryType, &[u8], &str)> = names
            .iter()
            .map(|n| (n.as_str(), F, &chunk[..], ""))
            .collect();
        let (_r, r) = run(&raw_tar(&members), 1 << 20);
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
    }

    #[test]
    fn the_stream_is_read_to_its_end() {
        let mut tar = raw_tar(&[("a.xml", F, b"x", "")]);
        tar.extend_from_slice(b"smuggled bytes after the end-of-archive marker");
        let (_r, r) = run(&tar, 1 << 20);
        assert!(matches!(r, Err(DecodeError::Refused(_))), "{r:?}");
        // A gzip trailer with a bad CRC is only noticed if the stream is read to the end.
        let mut gz = crate::sim::data::gzip(&raw_tar(&[("a.xml", F, b"x", "")]));
        let n = gz.len();
        gz[n - 6] ^= 0xff;
        let (_r, r) = run_reader(flate2::read::MultiGzDecoder::new(&gz[..]), 1 << 20);
        assert!(matches!(r, Err(DecodeError::Corrupt(_))), "{r:?}");
    }

    fn run_reader(r: impl Read, max: u64) -> (tempfile::TempDir, Result<Unpacked, DecodeError>) {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("stage");
        fs::create_dir(&dest).unwrap();
        let out = unpack(r, &dest, max);
        (root, out)
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let (_r, r) = run(
            b"this is not a tar archive at all, but it is long enough to look at",
            1 << 20,
        );
        assert!(r.is_err());
        let mut tar = raw_tar(&[("a.xml", F, &[7u8; 2000], "")]);
        tar.truncate(1000);
        let (_r, r) = run(&tar, 1 << 20);
        assert!(matches!(r, Err(DecodeError::Corrupt(_))), "{r:?}");
    }

    const L: tar::EntryType = tar::EntryType::GNULongName;
    const K: tar::EntryType = tar::EntryType::GNULongLink;
    const X: tar::EntryType = tar::EntryType::XHeader;
    const G: tar::EntryType = tar::EntryType::XGlobalHeader;

    /// PAX records `"{len} {key}={value}\n"`.
    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while rest + len.to_string().len() != len {
                len = rest + len.to_string().len();
            }
            out.extend(format!("{len} {k}={v}\n").into_bytes());
        }
        out
    }

    fn on_disk(root: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.path().join("stage"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// `tests/fixtures/archives/make.sh` wrote these with GNU tar, git and Python.
    fn long_name() -> String {
        format!(
            "VXSE53_RJTD_20250212150002514_0c1f04f_{}.xml",
            "0".repeat(107)
        )
    }

    #[test]
    fn real_writers_metadata_records_are_read_not_written() {
        let fixtures: [(&str, &[u8]); 4] = [
            (
                "GNU long name",
                include_bytes!("../../tests/fixtures/archives/gnu-longname.tar.gz"),
            ),
            (
                "GNU tar --format=pax, global header",
                include_bytes!("../../tests/fixtures/archives/pax-gnutar.tar.gz"),
            ),
            (
                "git archive",
                include_bytes!("../../tests/fixtures/archives/pax-git-archive.tar.gz"),
            ),
            (
                "Python tarfile PAX, global header",
                include_bytes!("../../tests/fixtures/archives/pax-python.tar.gz"),
            ),
        ];
        let long = long_name();
        assert_eq!(long.len(), 149);
        for (what, gz) in fixtures {
            let (root, r) = run(&gunzip(gz), 1 << 20);
            let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut want = vec![
                long.clone(),
                "VXSE53_RJTD_20250212150002514_0c1f04f.xml".to_owned(),
                MANIFEST.to_owned(),
            ];
            want.sort();
            assert_eq!(
                on_disk(&root),
                want,
                "{what}: only the members, no metadata"
            );
            assert_eq!(
                fs::read(root.path().join("stage").join(&long)).unwrap(),
                b"{\"_originalId\":\"0c1f04f0\"}\n",
                "{what}"
            );
            let manifest = Manifest {
                entries: 2,
                telegrams: 1,
            };
            assert_eq!(
                (r.files, r.bytes, r.manifest),
                (3, 99, Some(manifest)),
                "{what}"
            );
        }
    }

    #[test]
    fn a_long_link_is_metadata_and_its_link_is_still_refused() {
        let gz = include_bytes!("../../tests/fixtures/archives/gnu-longlink.tar.gz");
        let (root, r) = run(&gunzip(gz), 1 << 20);
        match r {
            Err(DecodeError::Refused(m)) => assert!(m.contains("symbolic link"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(on_disk(&root).is_empty());
        // A long link before a regular file is dropped.
        let tar = raw_tar(&[
            ("././@LongLink", K, b"/etc/passwd\0", ""),
            ("a.xml", F, b"x", ""),
        ]);
        let (root, r) = run(&tar, 1 << 20);
        assert_eq!(r.unwrap().files, 1);
        assert_eq!(on_disk(&root), vec!["a.xml"]);
    }

    #[test]
    fn long_names_go_through_every_check() {
        let long_part = "x".repeat(300);
        let too_long = format!("{long_part}\0");
        let symlink = tar::EntryType::Symlink;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                raw_tar(&[
                    ("././@LongLink", L, b"../escape.xml\0", ""),
                    ("e.xml", F, b"x", ""),
                ]),
                "'..'",
            ),
            (
                raw_tar(&[
                    ("././@LongLink", L, b"/etc/escape.xml\0", ""),
                    ("e.xml", F, b"x", ""),
                ]),
                "absolute",
            ),
            (
                raw_tar(&[
                    ("././@LongLink", L, too_long.as_bytes(), ""),
                    ("e.xml", F, b"x", ""),
                ]),
                "255 bytes",
            ),
            (
                raw_tar(&[
                    ("p", X, &pax(&[("path", "../../pwned")]), ""),
                    ("e.xml", F, b"x", ""),
                ]),
                "'..'",
            ),
            (
                raw_tar(&[
                    ("p", X, &pax(&[("path", "/tmp/pwned")]), ""),
                    ("e.xml", F, b"x", ""),
                ]),
                "absolute",
            ),
            (
                raw_tar(&[
                    ("././@LongLink", L, b"long-link.xml\0", ""),
                    ("l", symlink, b"", "/"),
                ]),
                "symbolic link",
            ),
            (
                raw_tar(&[
                    ("././@LongLink", L, b"a.xml\0", ""),
                    ("p", X, &pax(&[("path", "b.xml")]), ""),
                    ("e.xml", F, b"x", ""),
                ]),
                "disagree",
            ),
            (
                raw_tar(&[("p", X, &pax(&[("size", "9")]), ""), ("e.xml", F, b"x", "")]),
                "PAX size",
            ),
            (
                raw_tar(&[
                    ("a.xml", F, b"x", ""),
                    ("././@LongLink", L, b"a.xml\0", ""),
                    ("b.xml", F, b"y", ""),
                ]),
                "duplicate",
            ),
        ];
        for (tar, why) in cases {
            let (root, r) = run(&tar, 1 << 20);
            match r {
                Err(DecodeError::Refused(m)) => {
                    assert!(m.contains(why), "{m} should mention {why}")
                }
                other => panic!("{why}: expected a refusal, got {other:?}"),
            }
            let beside: Vec<_> = fs::read_dir(root.path()).unwrap().collect();
            assert_eq!(beside.len(), 1, "{why}: nothing beside the stage");
        }
        // A long name that is safe is used, and a global header's path is not.
        let tar = raw_tar(&[
            ("pax_global_header", G, &pax(&[("path", "../g.xml")]), ""),
            (
                "././@LongLink",
                L,
                format!("{}\0", long_name()).as_bytes(),
                "",
            ),
            ("VXSE53_short.xml", F, b"long", ""),
            (
                "PaxHeaders/x",
                X,
                &pax(&[("path", "sub/pax.xml"), ("mtime", "1.5")]),
                "",
            ),
            ("pax-short", F, b"pax", ""),
        ]);
        let (root, r) = run(&tar, 1 << 20);
        assert_eq!(r.unwrap().files, 2);
        assert_eq!(on_disk(&root), vec![long_name(), "sub".to_owned()]);
        assert_eq!(
            fs::read(root.path().join("stage/sub/pax.xml")).unwrap(),
            b"pax"
        );
    }

    #[test]
    fn metadata_records_are_capped_before_they_are_read() {
        // A record announcing 64 MiB (with nothing behind it) is refused on its header alone:
        // had it been read, the stream would have ended and the error would be corruption.
        for kind in [L, K, X, G] {
            let mut tar = Vec::new();
            raw_member(&mut tar, "meta", kind, b"", "", 64 << 20);
            let (_root, r) = run(&tar, 1 << 30);
            match r {
                Err(DecodeError::Refused(m)) => assert!(m.contains("more than"), "{m}"),
                other => panic!("{kind:?}: expected a refusal, got {other:?}"),
            }
        }
        // Metadata counts against the size cap with the files.
        let record = pax(&[("comment", &"c".repeat(100_000))]);
        let members: Vec<(&str, tar::EntryType, &[u8], &str)> =
            (0..12).map(|_| ("g", G, &record[..], "")).collect();
        let (_root, r) = run(&raw_tar(&members), 1 << 20);
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
    }

    #[test]
    fn broken_metadata_and_a_missing_end_marker_are_corrupt() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                raw_tar(&[("a.xml", F, b"x", ""), ("././@LongLink", L, b"b.xml\0", "")]),
                "describe no member",
            ),
            (
                raw_tar(&[
                    ("././@LongLink", L, b"b.xml\0", ""),
                    ("././@LongLink", L, b"c.xml\0", ""),
                    ("a.xml", F, b"x", ""),
                ]),
                "two GNU long name",
            ),
            (
                raw_tar(&[("p", X, b"not a record", ""), ("a.xml", F, b"x", "")]),
                "PAX",
            ),
        ];
        for (tar, why) in cases {
            let (_root, r) = run(&tar, 1 << 20);
            match r {
                Err(DecodeError::Corrupt(m)) => {
                    assert!(m.contains(why), "{m} should mention {why}")
                }
                other => panic!("{why}: expected corruption, got {other:?}"),
            }
        }
        // Cut at a member boundary: every member whole, but no end-of-archive marker.
        let mut tar = raw_tar(&[("a.xml", F, b"x", ""), ("b.xml", F, b"y", "")]);
        tar.truncate(1024);
        let (_root, r) = run(&tar, 1 << 20);
        match r {
            Err(DecodeError::Corrupt(m)) => assert!(m.contains("end-of-archive"), "{m}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        // The same cut in a gzip of two members passes both CRCs; the marker still tells.
        let tar = raw_tar(&[("a.xml", F, b"x", ""), ("b.xml", F, b"y", "")]);
        let gz = crate::sim::data::gzip(&tar[..1024]);
        let (_root, r) = run_reader(flate2::read::MultiGzDecoder::new(&gz[..]), 1 << 20);
        assert!(matches!(r, Err(DecodeError::Corrupt(_))), "{r:?}");
        let mut whole = gz.clone();
        whole.extend(crate::sim::data::gzip(&tar[1024..]));
        let (_root, r) = run_reader(flate2::read::MultiGzDecoder::new(&whole[..]), 1 << 20);
        assert_eq!(r.unwrap().files, 2);
    }

    #[test]
    fn the_manifest_counts_twins_once() {
        let manifest = br#"[{"id":"x1"},{"id":"j1","originalId":"x1"},{"id":"x2"},{"id":"j2","originalId":"x2"},{"id":"b1"},{"id":"j3","originalId":"gone"}]"#;
        let (_root, r) = run(&raw_tar(&[(MANIFEST, F, manifest, "")]), 1 << 20);
        let want = Manifest {
            entries: 6,
            telegrams: 4,
        };
        assert_eq!(r.unwrap().manifest, Some(want));
        for bad in [&b"{}"[..], b"[1, 2]", b"not json"] {
            let (_root, r) = run(&raw_tar(&[(MANIFEST, F, bad, "")]), 1 << 20);
            assert_eq!(r.unwrap().manifest, None);
        }
    }
}
