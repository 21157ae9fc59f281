//! The data directory, the local file system [`Sink`]: safe names, staging, durable placement,
//! adoption after a crash, removal.
//!
//! Layout (relative to `storage.data_dir`; the keys are [`crate::sink::layout`]'s):
//! * `jmafile/{classification}/{YYYY-MM-DD}/{name}` — one file per item, date = UTC date of
//!   `receivedTime`; a `concat` item is a folder of its children.
//! * `archive/{classification}/{YYYY-MM-DD}` — a daily archive, unpacked.
//! * `.tmp/{node_id}/` — one node's partial files (staging). Everything there is garbage after
//!   a crash and is removed when that node starts; nodes sharing the dir never touch each
//!   other's.
//! * `.lock` — held by a single node (SQLite) so two daemons never share its data dir; nodes
//!   of a cluster (PostgreSQL) share the dir, and the database's node registry says who runs.
//!
//! Durability promise: a file or folder appears under its final name only complete and fsynced
//! (write to `.tmp/`, fsync, rename, fsync the directory), so a path that exists is a whole item.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::sink::{Sink, Staged};

pub const TMP_DIR: &str = ".tmp";
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage.data_dir {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another jma-poller is already running on {} (it holds {}); stop it first or use another storage.data_dir",
        path.display(), lock.display()
    )]
    Locked { path: PathBuf, lock: PathBuf },
}

/// A name from the API that must not become a path component.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unsafe name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// Accepts `name` as a single path component, or says why not: no separators, no `..`, no
/// NUL or control characters, not empty, at most 255 bytes.
pub fn safe_component(name: &str) -> Result<&str, NameError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name.contains("..") {
        Some("contains '..' or is '.'")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator (absolute or nested path)")
    } else if name.chars().any(|c| c.is_control()) {
        Some("contains NUL or control characters")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else if name == TMP_DIR || name == LOCK_FILE {
        Some("reserved name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NameError {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(name),
    }
}

/// fsync a directory, so a rename or create inside it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, plus an fsync of each parent that gained a new entry.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Total size of a file, or of the files directly inside a folder (a concat item).
pub fn size_on_disk(path: &Path) -> io::Result<u64> {
    let meta = fs::metadata(path)?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in fs::read_dir(path)? {
            total += entry?.metadata()?.len();
        }
        Ok(total)
    } else {
        Ok(meta.len())
    }
}

/// The data directory of a running daemon.
#[derive(Debug)]
pub struct Storage {
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    /// Held for the life of the process; the OS releases it even on kill -9.
    _lock: Option<File>,
    /// Folders whose entries up to the data dir were fsynced by this process. A folder made by
    /// a run that crashed before its parent's fsync exists but may not survive power loss, so
    /// each one is made durable once per process before anything is placed in it.
    durable: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    /// `storage.min_free`: downloads pause below this much free space.
    min_free: u64,
}

impl Storage {
    /// Creates the data dir, takes the lock, and removes partial files left by a crash, for
    /// the node named after this host.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        Storage::open_as(data_dir, &crate::model::NodeId::from_host(), true)
    }

    /// Opens the data dir for node `node`: it stages in `.tmp/{node}/` (on the same
    /// filesystem as the data, so renames stay atomic) and sweeps only that at start, so nodes
    /// sharing the dir never remove each other's partial files. `take_lock`: a single node
    /// also takes `.lock`, keeping a second daemon off its files.
    pub fn open_as(
        data_dir: &Path,
        node: &crate::model::NodeId,
        take_lock: bool,
    ) -> Result<Storage, StorageError> {
        let io_err = |source| StorageError::DataDir {
            path: data_dir.to_owned(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io_err)?;
        let lock = if take_lock {
            Some(Storage::lock(data_dir)?)
        } else {
            None
        };
        let storage = Storage {
            data_dir: data_dir.to_owned(),
            tmp_dir: data_dir.join(TMP_DIR).join(node.as_str()),
            _lock: lock,
            durable: Default::default(),
            min_free: 0,
        };
        storage.sweep_legacy_tmp().map_err(io_err)?;
        storage.sweep_tmp().map_err(io_err)?;
        fs::create_dir_all(&storage.tmp_dir).map_err(io_err)?;
        // A probe write: a read-only or full data dir should fail now, naming the setting,
        // not on the first download.
        NamedTempFile::new_in(&storage.tmp_dir).map_err(io_err)?;
        Ok(storage)
    }

    /// Fails with [`StorageError::Locked`] when a daemon holds `data_dir`'s `.lock` (tools that
    /// need it stopped, such as `state copy`); takes nothing and creates nothing.
    pub fn ensure_unlocked(data_dir: &Path) -> Result<(), StorageError> {
        if data_dir.join(LOCK_FILE).is_file() {
            drop(Storage::lock(data_dir)?);
        }
        Ok(())
    }

    /// Takes the data dir's `.lock` (held until the process ends).
    fn lock(data_dir: &Path) -> Result<File, StorageError> {
        let io_err = |source| StorageError::DataDir {
            path: data_dir.to_owned(),
            source,
        };
        let lock_path = data_dir.join(LOCK_FILE);
        // Created once, then held open read-only: flock needs no write access, and a file kept
        // open for writing would stop the filesystem from being remounted read-only.
        if !lock_path.exists() {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(io_err)?;
        }
        let lock = File::open(&lock_path).map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    path: data_dir.to_owned(),
                    lock: lock_path,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        Ok(lock)
    }

    /// Removes partial files an older version staged directly in `.tmp/`. Their names start
    /// with a dot (the temp-file crate's `.tmp…`); node ids never do, so no node's staging
    /// dir is touched.
    fn sweep_legacy_tmp(&self) -> io::Result<()> {
        let top = self.data_dir.join(TMP_DIR);
        let entries = match fs::read_dir(&top) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Removes everything under this node's staging dir; returns how many entries were
    /// removed.
    fn sweep_tmp(&self) -> io::Result<usize> {
        let mut removed = 0;
        let entries = match fs::read_dir(&self.tmp_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(
                event = "tmp_swept",
                removed,
                "removed {removed} partial file(s) left by an earlier crash"
            );
        }
        Ok(removed)
    }

    /// Downloads pause while the filesystem has less than `bytes` free (`storage.min_free`).
    pub fn with_min_free(mut self, bytes: u64) -> Storage {
        self.min_free = bytes;
        self
    }

    /// `storage.min_free` in bytes (0 = off).
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Bytes available to us on the data dir's filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.data_dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// `Some((free, min_free))` while free space is below `storage.min_free`.
    pub fn low_on_space(&self) -> Option<(u64, u64)> {
        if self.min_free == 0 {
            return None;
        }
        match self.free_space() {
            Ok(free) if free < self.min_free => Some((free, self.min_free)),
            _ => None,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.data_dir.join(rel)
    }

    pub fn temp_file(&self) -> io::Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix("item-")
            .tempfile_in(&self.tmp_dir)
    }

    pub fn temp_dir(&self) -> io::Result<TempDir> {
        tempfile::Builder::new()
            .prefix("item-")
            .tempdir_in(&self.tmp_dir)
    }

    /// Creates `dir` (inside the data dir) and fsyncs every folder entry on the way up, once
    /// per folder per process.
    fn durable_dir(&self, dir: &Path) -> io::Result<()> {
        let known = self
            .durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(dir);
        if known {
            return Ok(());
        }
        create_dirs_durably(dir)?;
        let mut cur = dir;
        while let Some(parent) = cur.parent() {
            if !parent.starts_with(&self.data_dir) {
                break;
            }
            sync_dir(parent)?;
            if parent == self.data_dir {
                break;
            }
            cur = parent;
        }
        self.durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_owned());
        Ok(())
    }

    /// Makes an item found in place after a crash durable before it is recorded as done: the
    /// crash may have come between the rename and the directory fsync.
    pub fn make_durable(&self, rel: &str) -> io::Result<u64> {
        let path = self.abs(rel);
        File::open(&path)?.sync_all()?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
            self.durable_dir(parent)?;
        }
        size_on_disk(&path)
    }

    /// Moves a finished, fsynced temp file to `rel` and makes the rename durable.
    pub fn place_file(&self, tmp: NamedTempFile, rel: &str) -> io::Result<PathBuf> {
        let dest = self.abs(rel);
        let parent = dest.parent().unwrap_or(&self.data_dir).to_owned();
        self.durable_dir(&parent)?;
        tmp.persist(&dest).map_err(|e| e.error)?;
        sync_dir(&parent)?;
        Ok(dest)
    }

    /// Moves a finished staging folder (files and folder fsynced) to `rel`, replacing a stale
    /// folder of that name if one is there.
    pub fn place_dir(&self, tmp: TempDir, rel: &str) -> io::Result<PathBuf> {
        let dest = self.abs(rel);
        let parent = dest.parent().unwrap_or(&self.data_dir).to_owned();
        self.durable_dir(&parent)?;
        if dest.exists() {
            // Only reachable when something else created this path (our own finished items
            // are never placed twice); keep the swap crash-safe by moving it into .tmp first.
            let trash = self.temp_dir()?;
            let aside = trash.path().join("stale");
            fs::rename(&dest, &aside)?;
            drop(trash);
        }
        let staged = tmp.keep();
        if let Err(e) = fs::rename(&staged, &dest) {
            let _ = fs::remove_dir_all(&staged);
            return Err(e);
        }
        sync_dir(&parent)?;
        Ok(dest)
    }
}

/// Removes the file or folder at `path` and then any folders left empty above it, up to (not
/// including) `data_dir`. Returns the bytes freed.
fn remove_and_prune(data_dir: &Path, path: &Path) -> io::Result<u64> {
    let bytes = size_on_disk(path).unwrap_or(0);
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut dir: Option<&Path> = path.parent();
    while let Some(d) = dir {
        if d == data_dir || !d.starts_with(data_dir) {
            break;
        }
        // Fails (harmlessly) as soon as a folder is not empty.
        if fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(bytes)
}

impl Sink for Storage {
    fn staging_dir(&self) -> &Path {
        &self.tmp_dir
    }

    fn commit(&self, staged: Staged, key: &str) -> io::Result<PathBuf> {
        match staged {
            Staged::File(f) => self.place_file(f, key),
            Staged::Dir(d) => self.place_dir(d, key),
        }
    }

    fn adopt(&self, key: &str) -> io::Result<Option<u64>> {
        if !self.abs(key).exists() {
            return Ok(None);
        }
        self.make_durable(key).map(Some)
    }

    fn remove(&self, key: &str) -> io::Result<u64> {
        remove_and_prune(&self.data_dir, &self.abs(key))
    }

    fn locate(&self, key: &str) -> PathBuf {
        self.abs(key)
    }

    fn low_on_space(&self) -> Option<(u64, u64)> {
        Storage::low_on_space(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Nodes sharing a data dir stage apart and sweep only their own leftovers; what an older
    /// version left directly in `.tmp/` is swept by whoever starts.
    #[test]
    fn each_node_stages_and_sweeps_only_its_own_tmp_dir() {
        use crate::model::NodeId;
        let dir = tempfile::tempdir().unwrap();
        let a = Storage::open_as(dir.path(), &NodeId("a".into()), false).unwrap();
        let b = Storage::open_as(dir.path(), &NodeId("b".into()), false).unwrap();
        assert_eq!(a.tmp_dir(), dir.path().join(".tmp/a"));
        let b_partial = b.tmp_dir().join("partial");
        std::fs::write(&b_partial, b"half a body").unwrap();
        let a_partial = a.tmp_dir().join("partial");
        std::fs::write(&a_partial, b"half a body").unwrap();
        let legacy = dir.path().join(".tmp/.tmpAbC123");
        std::fs::write(&legacy, b"old").unwrap();
        drop(a);
        let _a = Storage::open_as(dir.path(), &NodeId("a".into()), false).unwrap();
        assert!(!a_partial.exists(), "a's own leftovers are swept");
        assert!(!legacy.exists(), "an older version's leftovers are swept");
        assert!(b_partial.exists(), "b's partial file is b's business");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "x\0y",
            "tab\tname",
            ".tmp",
            ".lock",
        ] {
            assert!(safe_component(bad).is_err(), "{bad:?} should be refused");
        }
        let long = "a".repeat(256);
        assert!(safe_component(&long).is_err());
        for good in [
            "Z__C_RJTD_20240525083000_SRF_GPV_grib2.bin",
            "a.b.c",
            "日本.bin",
            ".hidden",
        ] {
            assert_eq!(safe_component(good).unwrap(), good);
        }
    }

    #[test]
    fn second_open_is_refused_and_tmp_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let err = Storage::open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        let mut leftover = s.temp_file().unwrap();
        leftover.write_all(b"partial").unwrap();
        let (_f, path) = leftover.keep().unwrap();
        drop(s);
        assert!(path.exists());
        let _s = Storage::open(dir.path()).unwrap();
        assert!(!path.exists(), "partial file swept on start");
    }

    #[test]
    fn placement_creates_dirs_and_replaces_stale_folders() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let mut f = s.temp_file().unwrap();
        f.write_all(b"hello").unwrap();
        let p = s.place_file(f, "jmafile/c/2024-01-01/a.bin").unwrap();
        assert_eq!(fs::read(p).unwrap(), b"hello");

        fs::create_dir_all(s.abs("jmafile/c/2024-01-01/folder")).unwrap();
        fs::write(s.abs("jmafile/c/2024-01-01/folder/old"), b"x").unwrap();
        let staging = s.temp_dir().unwrap();
        fs::write(staging.path().join("new"), b"yy").unwrap();
        let p = s.place_dir(staging, "jmafile/c/2024-01-01/folder").unwrap();
        assert!(p.join("new").exists() && !p.join("old").exists());
        assert_eq!(size_on_disk(&p).unwrap(), 2);
        assert_eq!(
            fs::read_dir(s.tmp_dir()).unwrap().count(),
            0,
            "nothing left in .tmp"
        );
    }

    #[test]
    fn the_sink_adopts_what_is_in_place_and_removes_with_empty_parents() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let key = "jmafile/c/2024-01-01/a.bin";
        assert_eq!(s.adopt(key).unwrap(), None, "nothing in place");
        let mut f = tempfile::NamedTempFile::new_in(s.staging_dir()).unwrap();
        f.write_all(b"hello").unwrap();
        let p = s.commit(Staged::File(f), key).unwrap();
        assert_eq!(p, s.locate(key));
        assert_eq!(s.adopt(key).unwrap(), Some(5));
        fs::write(s.abs("jmafile/c/2024-01-01/b.bin"), b"xy").unwrap();
        assert_eq!(Sink::remove(&s, key).unwrap(), 5);
        assert!(
            s.abs("jmafile/c/2024-01-01").is_dir(),
            "a folder still in use stays"
        );
        assert_eq!(Sink::remove(&s, "jmafile/c/2024-01-01/b.bin").unwrap(), 2);
        assert!(
            !s.abs("jmafile").exists(),
            "empty folders go, up to the data dir"
        );
        assert!(dir.path().is_dir());
        assert_eq!(Sink::remove(&s, key).unwrap(), 0, "gone already is fine");
    }
}
