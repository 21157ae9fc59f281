//! What to do with an item's body, decided once when it is listed and stored with it (as JSON
//! in the state store): how the body is compressed and which file(s) it becomes. Plain data;
//! `download::plan` decides it, `download` carries it out.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zip,
}

impl Compression {
    pub fn parse(value: Option<&str>) -> Result<Compression, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("null") | Some("none") => Ok(Compression::None),
            Some("gzip") => Ok(Compression::Gzip),
            Some("zip") => Ok(Compression::Zip),
            Some(other) => Err(format!(
                "unsupported compression {other:?} (known: gzip, zip, null)"
            )),
        }
    }
}

/// One output file of a concat item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    pub name: String,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Layout {
    /// One file; `length` is `headers[0].length` (the received file's size, checked against
    /// the body, or against the decompressed size for producers that announce that).
    Single { length: u64 },
    /// A folder of children cut from the (decompressed) body by their announced lengths.
    Concat { children: Vec<Child> },
    /// A daily archive: a `.tar.gz` of `file_size` bytes, unpacked safely into a folder.
    Archive {
        file_size: u64,
        data_count: Option<u64>,
        /// Keep the tarball inside the folder under this name (`archive.keep_tarball`).
        keep_tarball: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub compression: Compression,
    pub layout: Layout,
}

impl Plan {
    /// Bytes the item decompresses to, when known in advance (concat).
    pub fn announced_output(&self) -> Option<u64> {
        match &self.layout {
            Layout::Single { .. } | Layout::Archive { .. } => None,
            Layout::Concat { children } => Some(children.iter().map(|c| c.length).sum()),
        }
    }
}

/// Longest file name (one path component) Linux file systems accept, in bytes.
pub const NAME_MAX: usize = 255;

/// The longest prefix of `s` that fits in `max` bytes without splitting a character.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    let mut keep = s.len().min(max);
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    &s[..keep]
}

/// `name` made unique for item `id` when another item already owns the path: the id's first
/// alphanumerics go before the extension (`a.bin` → `a.~Xy12AbCd.bin`).
pub fn disambiguate(rel_path: &str, id: &str) -> String {
    let tag: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    let (dir, leaf) = rel_path.rsplit_once('/').unwrap_or(("", rel_path));
    let suffix = format!(".~{tag}");
    // The tag goes before the extension, unless the extension alone leaves no room for a
    // stem within the 255-byte name limit: then the whole leaf is the stem.
    let (stem, ext) = match leaf.split_once('.') {
        Some((stem, ext)) if !stem.is_empty() && suffix.len() + ext.len() + 2 <= NAME_MAX => {
            (stem, Some(ext))
        }
        _ => (leaf, None),
    };
    // Shorten the stem, never the tag. A leaf that already ends in this very tag could come
    // out unchanged when cut to fit, so cut one more character then.
    let room = NAME_MAX - suffix.len() - ext.map_or(0, |e| e.len() + 1);
    let mut stem = truncate_at_char(stem, room);
    let new_leaf = loop {
        let candidate = match ext {
            Some(ext) => format!("{stem}{suffix}.{ext}"),
            None => format!("{stem}{suffix}"),
        };
        if candidate != leaf || stem.is_empty() {
            break candidate;
        }
        stem = truncate_at_char(stem, stem.len() - 1);
    };
    if dir.is_empty() {
        new_leaf
    } else {
        format!("{dir}/{new_leaf}")
    }
}
