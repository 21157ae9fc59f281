//! Where finished items go: the [`Sink`] seam, and the layout of keys in it.
//!
//! The sink owns the layout and the write protocol. Everything else names an item by its key
//! (the relative path stored with the item, decided once by [`layout`] when it is listed) and
//! asks the sink for the rest: where to stage output ([`Sink::staging_dir`]), how to commit it
//! atomically ([`Sink::commit`]), whether an item a crash left is already whole
//! ([`Sink::adopt`]), how to remove it ([`Sink::remove`]), where a hook finds it
//! ([`Sink::locate`]). The local file system ([`crate::storage::Storage`]) is the one
//! implementation.
//!
//! The simulator (`src/sim/`) states the layout again on its own, on purpose: it is the oracle
//! the tests compare against, so a layout bug here still fails them.

use std::io;
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

/// Output staged in the sink's staging area, not yet under its final name.
#[derive(Debug)]
pub enum Staged {
    File(NamedTempFile),
    Dir(TempDir),
}

/// A place finished items are committed to. Every method may block (file system work): call
/// it from `spawn_blocking`.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Where output is staged while it is written (fsynced there, then committed). Anything
    /// left there after a crash is garbage.
    fn staging_dir(&self) -> &Path;

    /// Moves finished, fsynced staged output to `key`, durably: after it returns, `key` holds
    /// the whole item even across power loss; before, it holds nothing of it. A stale folder
    /// already at `key` (not ours) is replaced.
    fn commit(&self, staged: Staged, key: &str) -> io::Result<PathBuf>;

    /// An item whose download a crash interrupted: `Some(bytes)` when it is in place (made
    /// durable first, as the crash may have come between the rename and the directory fsync),
    /// `None` when it must be fetched again.
    fn adopt(&self, key: &str) -> io::Result<Option<u64>>;

    /// Removes the item at `key` (gone already is fine) and any folders left empty by that.
    /// Returns the bytes freed.
    fn remove(&self, key: &str) -> io::Result<u64>;

    /// Where the item at `key` can be read (for a hook).
    fn locate(&self, key: &str) -> PathBuf;

    /// `Some((free, min_free))` while the sink has less room than configured: downloads pause.
    fn low_on_space(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The keys items are stored under, decided when an item is listed. Every component that
/// comes from the API is checked with [`crate::storage::safe_component`].
pub mod layout {
    use time::{Date, OffsetDateTime};

    use crate::model::plan::{NAME_MAX, truncate_at_char};
    use crate::storage::{NameError, safe_component};

    /// `jmafile/{classification}/{YYYY-MM-DD}/{leaf}`, date = the UTC date of `receivedTime`;
    /// a concat item's leaf is a folder of its children.
    pub fn jmafile(
        classification: &str,
        received: OffsetDateTime,
        leaf: &str,
    ) -> Result<String, NameError> {
        let date = received.to_offset(time::UtcOffset::UTC).date();
        Ok(format!(
            "jmafile/{}/{}/{}",
            safe_component(classification)?,
            ymd(date, "-"),
            safe_component(leaf)?
        ))
    }

    /// `archive/{classification}/{YYYY-MM-DD}` (the JST date the archive covers), a folder of
    /// the unpacked files.
    pub fn archive(classification: &str, date: Date) -> Result<String, NameError> {
        Ok(format!(
            "archive/{}/{}",
            safe_component(classification)?,
            ymd(date, "-")
        ))
    }

    /// The name of a tarball kept inside its archive folder (`archive.keep_tarball`):
    /// `{YYYYMMDD}-{classification}.tar.gz`. A classification may be up to 255 bytes (it is a
    /// folder name of its own), so it is shortened to stay within the 255-byte name limit.
    pub fn archive_tarball(classification: &str, date: Date) -> String {
        let prefix = format!("{}-", ymd(date, ""));
        let suffix = ".tar.gz";
        let room = NAME_MAX - prefix.len() - suffix.len();
        format!("{prefix}{}{suffix}", truncate_at_char(classification, room))
    }

    fn ymd(d: Date, sep: &str) -> String {
        format!(
            "{:04}{sep}{:02}{sep}{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn layout_uses_the_utc_date() {
            let t = time::macros::datetime!(2024-05-26 08:35:00 +09:00);
            assert_eq!(
                jmafile("jmafile.rdr-nc5min", t, "x.bin").unwrap(),
                "jmafile/jmafile.rdr-nc5min/2024-05-25/x.bin"
            );
            assert!(jmafile("../etc", t, "x").is_err());
        }

        #[test]
        fn archives_go_to_their_day_and_keep_a_short_enough_tarball_name() {
            let d = time::macros::date!(2025 - 02 - 03);
            assert_eq!(
                archive("telegram.earthquake", d).unwrap(),
                "archive/telegram.earthquake/2025-02-03"
            );
            assert!(archive("a/b", d).is_err());
            assert_eq!(
                archive_tarball("telegram.earthquake", d),
                "20250203-telegram.earthquake.tar.gz"
            );
            assert_eq!(archive_tarball(&"x".repeat(255), d).len(), NAME_MAX);
        }
    }
}
