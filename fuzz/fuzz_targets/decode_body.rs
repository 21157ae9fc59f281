//! The body decoder: plain, gzip and zip bodies, concat splitting by announced child lengths,
//! the archive (`.tar.gz`) path, the `max_size` cap, short reads, a connection reset at the end
//! and shutdown mid-body.
//!
//! Input: `mode, cap, [chunk], [cancel], [deflate], [layout args], payload` (bracketed bytes
//! only when `mode` asks for them).
//! * `mode & 3`: 0 plain, 1 gzip, 2 zip, 3 archive (tar.gz).
//! * `mode & 4`: the harness encodes `payload` itself (gzip / one-entry zip / gzip of a tar),
//!   so the decoded bytes are known and checked; otherwise `payload` is the raw body.
//! * `(mode >> 3) & 3`: 0 `Single` with the exact length, 1 `Single` with a u24 length from the
//!   input, 2-3 `Concat` with `n = byte % 9` children of u24 lengths (a plan never announces
//!   more than `max_size` in all, as the planner guarantees; such inputs are skipped).
//!   Archive: a flags byte instead (1: fileSize from a u24, 2: dataCount from a u16,
//!   4: keep the tarball).
//! * `mode & 32`: the body arrives in short reads of `chunk % 64 + 1` bytes.
//! * `mode & 64`: the body ends with a connection reset instead of EOF.
//! * `mode & 128`: shutdown is signalled after `cancel % 8` reads.
//! * zip with `mode & 4`: bit 0 of `deflate` picks deflate over stored.
//! * `cap`: `max_size` is 1 MiB for 0, else `cap * 97` bytes.
//!
//! Properties: no panic; nothing written outside the tmp dir; nothing left in it once the
//! result is dropped; never more than `max_size` decompressed bytes on disk; and, when the
//! body is well formed and fits, the output is exactly the payload.

#![no_main]

use fuzz_support::{Body, Bytes, Sandbox, assert_empty, gzip, walk, zip_one};
use jma_poller::download::decode::{DecodeError, Staged, decode};
use jma_poller::download::plan::{Child, Compression, Layout, Plan};
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let cap = b.u8();
    let max_size: u64 = if cap == 0 {
        1 << 20
    } else {
        u64::from(cap) * 97
    };
    let kind = mode & 3;
    let wrap = mode & 4 != 0;
    let shape = (mode >> 3) & 3;
    let chunk = if mode & 32 != 0 {
        (b.u8() % 64) as usize + 1
    } else {
        usize::MAX
    };
    let fail_at_end = mode & 64 != 0;
    let cancel_after = (mode & 128 != 0).then(|| u32::from(b.u8() % 8));
    let deflate = kind == 2 && wrap && b.u8() & 1 != 0;

    // Layout arguments come before the payload; `exact` lengths are filled in below.
    enum Shape {
        Exact,
        Single(u64),
        Concat(Vec<u64>),
        Archive(u8, u64, Option<u64>),
    }
    let shape = if kind == 3 {
        let flags = b.u8();
        let size = if flags & 1 != 0 {
            u64::from(b.u24())
        } else {
            u64::MAX
        };
        let count = (flags & 2 != 0).then(|| u64::from(b.u16()));
        Shape::Archive(flags, size, count)
    } else {
        match shape {
            0 => Shape::Exact,
            1 => Shape::Single(u64::from(b.u24())),
            _ => {
                let n = b.u8() % 9;
                Shape::Concat((0..n).map(|_| u64::from(b.u24())).collect())
            }
        }
    };
    let payload = b.rest();
    let body: Vec<u8> = match (kind, wrap) {
        (1, true) | (3, true) => gzip(payload),
        (2, true) => zip_one("inner.bin", payload, deflate),
        _ => payload.to_vec(),
    };
    let compression = match kind {
        0 => Compression::None,
        2 => Compression::Zip,
        _ => Compression::Gzip,
    };
    let layout = match &shape {
        Shape::Exact => Layout::Single {
            length: body.len() as u64,
        },
        Shape::Single(n) => Layout::Single { length: *n },
        Shape::Concat(lengths) => {
            if lengths.iter().sum::<u64>() > max_size {
                return; // the planner refuses this; decode trusts it
            }
            Layout::Concat {
                children: lengths
                    .iter()
                    .enumerate()
                    .map(|(i, l)| Child {
                        name: format!("c{i}"),
                        length: *l,
                    })
                    .collect(),
            }
        }
        Shape::Archive(flags, size, count) => Layout::Archive {
            file_size: if *size == u64::MAX {
                body.len() as u64
            } else {
                *size
            },
            data_count: *count,
            keep_tarball: (flags & 4 != 0).then(|| "keep.tar.gz".to_owned()),
        },
    };
    let plan = Plan {
        compression,
        layout,
    };
    // The bytes decode must produce, when the harness made the body itself.
    let known = (kind != 3 && (wrap || kind == 0)).then_some(payload);
    // Short reads are not a fault: they must decode the same.
    let faults = fail_at_end || cancel_after.is_some();

    Sandbox::get().run(|tmp| {
        let cancel = CancellationToken::new();
        let reader = Body {
            data: &body,
            chunk,
            fail_at_end,
            cancel_after: cancel_after.map(|n| (n, cancel.clone())),
            reads: 0,
        };
        let result = decode(reader, &plan, tmp, max_size, &cancel);
        match &result {
            Ok(d) => {
                let (root, out) = match &d.staged {
                    Staged::File(f) => {
                        assert_eq!(f.path().parent(), Some(tmp), "staged outside tmp");
                        let bytes = std::fs::read(f.path()).unwrap();
                        (None, vec![bytes])
                    }
                    Staged::Dir(dir) => {
                        assert_eq!(dir.path().parent(), Some(tmp), "staged outside tmp");
                        (Some(dir.path().to_owned()), Vec::new())
                    }
                };
                match (&plan.layout, root) {
                    (Layout::Single { .. }, None) => {
                        let got = &out[0];
                        assert!(
                            got.len() as u64 <= max_size,
                            "{} > cap {max_size}",
                            got.len()
                        );
                        assert_eq!(got.len() as u64, d.bytes);
                        if let Some(want) = known {
                            assert_eq!(got.as_slice(), want, "decoded bytes differ");
                        }
                    }
                    (Layout::Concat { children }, Some(root)) => {
                        let files = walk(&root);
                        assert_eq!(files.len(), children.len());
                        let mut joined = Vec::new();
                        for c in children {
                            let bytes = std::fs::read(root.join(&c.name)).unwrap();
                            assert_eq!(bytes.len() as u64, c.length, "child {}", c.name);
                            joined.extend(bytes);
                        }
                        assert!(joined.len() as u64 <= max_size);
                        if let Some(want) = known {
                            assert_eq!(joined.as_slice(), want, "children differ from the body");
                        }
                    }
                    (Layout::Archive { keep_tarball, .. }, Some(root)) => {
                        let unpacked: u64 = walk(&root)
                            .iter()
                            .filter(|(p, _)| {
                                keep_tarball.as_deref().is_none_or(|k| p.as_os_str() != k)
                            })
                            .map(|(_, n)| n)
                            .sum();
                        assert!(unpacked <= max_size, "{unpacked} > cap {max_size}");
                    }
                    (layout, root) => panic!("staged {root:?} for {layout:?}"),
                }
            }
            // A hostile tarball can make unpack fail with a Disk error (see the report); a
            // plain, gzip or zip body never should.
            Err(DecodeError::Disk { path, source }) if kind != 3 => {
                panic!("disk error {} on a healthy disk: {source}", path.display())
            }
            Err(_) => {}
        }
        // When the body is what the plan says and fits, decoding must succeed.
        if let (Some(want), false) = (known, faults) {
            let fits = want.len() as u64 <= max_size;
            let matches = match &plan.layout {
                Layout::Single { length } => {
                    *length == body.len() as u64 || *length == want.len() as u64
                }
                Layout::Concat { children } => {
                    children.iter().map(|c| c.length).sum::<u64>() == want.len() as u64
                }
                Layout::Archive { .. } => false,
            };
            let raw_fits = (body.len() as u64) <= max_size + max_size / 16 + 64 * 1024;
            if fits && matches && raw_fits {
                assert!(result.is_ok(), "well-formed body refused: {result:?}");
            }
        }
        if let Err(DecodeError::TooLarge { limit }) = &result {
            assert_eq!(*limit, max_size);
        }
        drop(result);
        assert_empty(tmp, "after decode");
    });
});
