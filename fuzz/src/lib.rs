//! Helpers shared by the fuzz targets: a byte cursor that turns fuzz input into choices, a
//! sandbox that proves nothing is written outside the target folder, body readers with
//! network-like behaviour, and small builders for gzip/zip/tar inputs.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

/// Reads choices off the front of the fuzz input; runs out gracefully (zeros).
pub struct Bytes<'a> {
    pub data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u24(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), 0])
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// `parent/l1/l2/` holds the target folder `t` and nothing else, at every level, so a write
/// through `..`, `../..` or `../../..` shows up as an extra entry. The parent is made once per
/// process (inside `$TMPDIR`, which `.ci/fuzz` points at a scratch folder on tmpfs).
pub struct Sandbox {
    levels: [PathBuf; 3],
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

impl Sandbox {
    pub fn get() -> &'static Sandbox {
        SANDBOX.get_or_init(|| {
            let parent = tempfile::Builder::new()
                .prefix("jma-fuzz-")
                .tempdir()
                .expect("parent temp dir")
                .keep();
            let l1 = parent.join("l1");
            let l2 = l1.join("l2");
            fs::create_dir_all(&l2).expect("sandbox levels");
            Sandbox {
                levels: [parent, l1, l2],
            }
        })
    }

    /// Runs `f` with a fresh, empty target folder; afterwards checks that nothing escaped and
    /// removes the folder.
    pub fn run<R>(&self, f: impl FnOnce(&Path) -> R) -> R {
        let target = self.levels[2].join("t");
        if target.exists() {
            fs::remove_dir_all(&target).expect("stale target");
        }
        fs::create_dir(&target).expect("target dir");
        let r = f(&target);
        self.assert_contained();
        fs::remove_dir_all(&target).expect("remove target");
        r
    }

    fn assert_contained(&self) {
        let expect = ["l1", "l2", "t"];
        for (dir, only) in self.levels.iter().zip(expect) {
            let names: Vec<String> = fs::read_dir(dir)
                .expect("read sandbox level")
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names,
                vec![only.to_owned()],
                "something was written outside the target folder, in {}",
                dir.display()
            );
        }
    }
}

/// What was left in a folder: (relative path, size) of every regular file; panics on anything
/// that is neither a regular file nor a directory (a symlink, a FIFO, a device).
pub fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("dir entry");
            let meta = fs::symlink_metadata(e.path()).expect("metadata");
            let ft = meta.file_type();
            if ft.is_dir() {
                go(root, &e.path(), out);
            } else if ft.is_file() {
                out.push((e.path().strip_prefix(root).unwrap().to_owned(), meta.len()));
            } else {
                panic!(
                    "not a regular file or folder: {} ({ft:?})",
                    e.path().display()
                );
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// Asserts `dir` is empty (decode's temp files were all removed).
pub fn assert_empty(dir: &Path, when: &str) {
    let left: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "{when}: left behind in the tmp dir: {left:?}"
    );
}

/// `name` is one normal path component equal to itself: no '/', '\\', NUL or control
/// characters, not "." or "..", 1-255 bytes.
pub fn assert_one_component(name: &str) {
    let comps: Vec<Component> = Path::new(name).components().collect();
    assert_eq!(comps.len(), 1, "{name:?} is not one component: {comps:?}");
    assert!(
        matches!(comps[0], Component::Normal(c) if c == name),
        "{name:?} is not a normal component equal to itself: {comps:?}"
    );
    assert!(!name.contains(['/', '\\', '\0']), "{name:?}");
    assert!(!name.chars().any(char::is_control), "{name:?}");
    assert!(name != "." && name != "..", "{name:?}");
    assert!(
        !name.is_empty() && name.len() <= 255,
        "{} bytes",
        name.len()
    );
}

/// A body as the network delivers it: optionally in short reads, optionally ending with an
/// I/O error instead of EOF (a connection reset), optionally cancelling shutdown after some
/// reads.
pub struct Body<'a> {
    pub data: &'a [u8],
    pub chunk: usize,
    pub fail_at_end: bool,
    pub cancel_after: Option<(u32, CancellationToken)>,
    pub reads: u32,
}

impl<'a> Body<'a> {
    pub fn plain(data: &'a [u8]) -> Self {
        Body {
            data,
            chunk: usize::MAX,
            fail_at_end: false,
            cancel_after: None,
            reads: 0,
        }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if let Some((after, token)) = &self.cancel_after
            && self.reads > *after
        {
            token.cancel();
        }
        if self.data.is_empty() {
            if self.fail_at_end {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset (fuzz)",
                ));
            }
            return Ok(0);
        }
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zip_one(name: &str, data: &[u8], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    w.start_file(
        name,
        zip::write::SimpleFileOptions::default().compression_method(method),
    )
    .unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap().into_inner()
}

/// One tar member described by the fuzz input; written raw so hostile names, link targets,
/// types and lying sizes can all be expressed (checksums are always right, so the input gets
/// past the header check).
#[derive(Debug)]
pub struct Member<'a> {
    pub kind: u8,
    pub name: &'a [u8],
    pub link: &'a [u8],
    pub data: &'a [u8],
    /// Header size field, when it lies about `data`.
    pub size: Option<u64>,
}

/// Entry types worth reaching often; other values are used as the raw type byte.
const KINDS: [u8; 12] = [
    b'0', b'5', b'2', b'1', b'x', b'L', b'g', b'3', b'6', b'7', b'K', b'\0',
];

impl<'a> Member<'a> {
    pub fn parse(b: &mut Bytes<'a>) -> Member<'a> {
        let k = b.u8();
        let kind = if (k as usize) < KINDS.len() {
            KINDS[k as usize]
        } else {
            k
        };
        let flags = b.u8();
        let name_len = (b.u8() % 101) as usize;
        let name = b.take(name_len);
        let link_len = if flags & 1 != 0 {
            (b.u8() % 101) as usize
        } else {
            0
        };
        let link = b.take(link_len);
        let size = (flags & 2 != 0).then(|| u64::from(b.u24()));
        let data_len = b.u16() as usize;
        let data = b.take(data_len);
        Member {
            kind,
            name,
            link,
            data,
            size,
        }
    }

    pub fn is_plain_file(&self) -> bool {
        (self.kind == b'0' || self.kind == b'\0' || self.kind == b'7') && self.size.is_none()
    }
}

pub fn parse_members<'a>(b: &mut Bytes<'a>, max: usize) -> Vec<Member<'a>> {
    let mut out = Vec::new();
    while !b.data.is_empty() && out.len() < max {
        out.push(Member::parse(b));
    }
    out
}

pub fn build_tar(members: &[Member<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..m.name.len()].copy_from_slice(m.name);
            gnu.linkname[..m.link.len()].copy_from_slice(m.link);
        }
        h.set_entry_type(tar::EntryType::new(m.kind));
        h.set_size(m.size.unwrap_or(m.data.len() as u64));
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}
