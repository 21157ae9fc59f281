//! Safe unpacking of a daily archive (`.tar.gz`) into a fresh staging folder.
//!
//! Nothing from the tarball is trusted. Every member is checked before a byte is written:
//! only regular files and directories are accepted (symlinks, hard links, devices, FIFOs are
//! refused, so nothing can point outside the folder); every path component must be a safe
//! name (no absolute paths, no `..`); duplicate names are refused; and the total unpacked size
//! and the member count are capped, so a decompression bomb stops at the cap. Files are written
//! by this code (never by `tar`'s own unpack), created fresh, and fsynced.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use super::decode::DecodeError;
use crate::storage::{safe_component, sync_dir};

/// The manifest every archive carries.
pub const MANIFEST: &str = "telegrams.json";
/// Members per archive; a day of the busiest classification holds a few thousand.
const MAX_ENTRIES: u64 = 500_000;
/// Zero padding accepted after the end-of-archive marker (tar pads to 10 KiB records).
const MAX_TRAILING: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    /// Entries in `telegrams.json`, when it is there and is a JSON array.
    pub manifest_entries: Option<u64>,
}

impl Unpacked {
    /// Body files: everything but the manifest.
    pub fn bodies(&self) -> u64 {
        self.files - u64::from(self.manifest_entries.is_some())
    }
}

fn refused(member: &str, why: &str) -> DecodeError {
    DecodeError::Refused(format!("tar member {member:?}: {why}"))
}

/// The member's path as safe components, or why it is refused.
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
    if out.as_os_str().is_empty() {
        return Err(refused(&shown, "empty path"));
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

/// Unpacks the tar stream `tar` (already decompressed) into the empty folder `dest`.
pub fn unpack(tar: impl Read, dest: &Path, max_bytes: u64) -> Result<Unpacked, DecodeError> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Unpacked::default();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut buf = vec![0u8; 128 * 1024];
    let entries = archive
        .entries()
        .map_err(|e| DecodeError::Corrupt(format!("tar: {e}")))?;
    for (n, entry) in entries.enumerate() {
        if n as u64 >= MAX_ENTRIES {
            return Err(DecodeError::Refused(format!(
                "more than {MAX_ENTRIES} tar members"
            )));
        }
        let mut entry = entry.map_err(|e| DecodeError::Corrupt(format!("tar: {e}")))?;
        let raw_path = entry
            .path()
            .map_err(|e| DecodeError::Corrupt(format!("tar member name: {e}")))?
            .into_owned();
        let rel = safe_member_path(&raw_path)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            make_parents(dest, &rel.join("x"), &mut dirs)?;
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            let what = if kind.is_symlink() {
                "symbolic link"
            } else if kind.is_hard_link() {
                "hard link"
            } else if kind.is_character_special() || kind.is_block_special() {
                "device node"
            } else if kind.is_fifo() {
                "FIFO"
            } else {
                "not a regular file"
            };
            return Err(refused(
                &raw_path.display().to_string(),
                &format!("{what} refused"),
            ));
        }
        if !seen.insert(rel.clone()) {
            return Err(refused(&raw_path.display().to_string(), "duplicate name"));
        }
        let declared = entry.header().size().unwrap_or(u64::MAX);
        if out.bytes.saturating_add(declared) > max_bytes {
            return Err(DecodeError::TooLarge { limit: max_bytes });
        }
        make_parents(dest, &rel, &mut dirs)?;
        let path = dest.join(&rel);
        let mut file = File::create_new(&path).map_err(|e| disk(&path, e))?;
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DecodeError::Corrupt(format!(
                        "tar member {}: {e}",
                        rel.display()
                    )));
                }
            };
            written += n as u64;
            // The header can lie; count what actually comes out.
            if out.bytes + written > max_bytes {
                return Err(DecodeError::TooLarge { limit: max_bytes });
            }
            file.write_all(&buf[..n]).map_err(|e| disk(&path, e))?;
        }
        file.sync_all().map_err(|e| disk(&path, e))?;
        out.bytes += written;
        out.files += 1;
    }
    // The tar reader stops at the end-of-archive marker; read on to the end of the stream so
    // the gzip trailer (its CRC) is checked too. Only the usual zero padding may follow.
    let mut rest = archive.into_inner().take(MAX_TRAILING + 1);
    let mut trailing = 0u64;
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DecodeError::Corrupt(format!(
                    "after the last tar member: {e}"
                )));
            }
        };
        if buf[..n].iter().any(|b| *b != 0) {
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
    for d in dirs.iter().rev() {
        sync_dir(d).map_err(|e| disk(d, e))?;
    }
    let manifest = dest.join(MANIFEST);
    if manifest.is_file() {
        out.manifest_entries = File::open(&manifest)
            .ok()
            .and_then(|f| {
                serde_json::from_reader::<_, Vec<serde::de::IgnoredAny>>(io::BufReader::new(f)).ok()
            })
            .map(|v| v.len() as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with members written raw, so hostile names and types can be expressed.
    pub fn raw_tar(members: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in members {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
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
        assert_eq!((r.files, r.bodies(), r.manifest_entries), (3, 2, Some(2)));
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
}
