//! The safe tar unpacker, alone and behind decode's archive (`.tar.gz`) path.
//!
//! Input: `mode, [cap u16], rest`.
//! * `mode & 3`: 0 `rest` is a raw tar for `unpack`; 1 the same tar gzipped by the harness and
//!   decoded as an archive item; 2 `rest` describes members (type, name, link, data, optionally
//!   a lying size; see `fuzz_support::Member`) that the harness writes as a tar with correct
//!   checksums, for `unpack`; 3 that tar gzipped, as an archive item.
//! * `mode & 4`: the byte cap is the u16 that follows (else 1 MiB).
//! * `mode & 8`: keep the tarball (archive modes).
//!
//! Properties: no panic; nothing written outside the destination; only regular files and
//! folders inside it; never more than the cap unpacked; the archive path leaves nothing in its
//! tmp dir once dropped; and a tar of plain, safe, distinct, honest members that fits is
//! unpacked whole with the right bytes.

#![no_main]

use std::path::Path;

use fuzz_support::{Bytes, Sandbox, assert_empty, build_tar, gzip, parse_members, walk};
use jma_poller::download::decode::{DecodeError, decode};
use jma_poller::download::plan::{Compression, Layout, Plan};
use jma_poller::download::unpack::unpack;
use jma_poller::storage::safe_component;
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let cap: u64 = if mode & 4 != 0 {
        u64::from(b.u16())
    } else {
        1 << 20
    };
    let keep = mode & 8 != 0;
    let members = (mode & 2 != 0).then(|| parse_members(&mut b, 64));
    let tar = match &members {
        Some(m) => build_tar(m),
        None => b.rest().to_vec(),
    };
    // What a correct unpacker must produce, when the members are all plain and acceptable.
    let expected: Option<Vec<(&str, &[u8])>> = members.as_ref().and_then(|ms| {
        let mut out = Vec::new();
        for m in ms {
            let name = std::str::from_utf8(m.name).ok()?;
            if !m.is_plain_file() || safe_component(name).is_err() || name.contains('\0') {
                return None;
            }
            out.push((name, m.data));
        }
        let mut names: Vec<&str> = out.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        let total: u64 = out.iter().map(|(_, d)| d.len() as u64).sum();
        (names.len() == out.len() && total <= cap).then_some(out)
    });

    Sandbox::get().run(|target| {
        let check = |dest: &Path, ok: bool, skip: Option<&str>| {
            let files = walk(dest);
            let total: u64 = files
                .iter()
                .filter(|(p, _)| skip.is_none_or(|k| p.as_os_str() != k))
                .map(|(_, n)| n)
                .sum();
            assert!(total <= cap, "{total} bytes unpacked, cap {cap}");
            if ok && let Some(want) = &expected {
                for (name, bytes) in want {
                    let got = std::fs::read(dest.join(name)).unwrap();
                    assert_eq!(&got, bytes, "member {name:?}");
                }
            }
        };
        if mode & 1 == 0 {
            let dest = target.join("dest");
            std::fs::create_dir(&dest).unwrap();
            let r = unpack(tar.as_slice(), &dest, cap);
            if let Ok(u) = &r {
                assert!(u.bytes <= cap);
                assert_eq!(u.files as usize, walk(&dest).len());
            }
            if expected.is_some() {
                assert!(r.is_ok(), "plain safe members refused: {r:?}");
            }
            check(&dest, r.is_ok(), None);
        } else {
            let body = gzip(&tar);
            let plan = Plan {
                compression: Compression::Gzip,
                layout: Layout::Archive {
                    file_size: body.len() as u64,
                    data_count: None,
                    keep_tarball: keep.then(|| "keep.tar.gz".to_owned()),
                },
            };
            let cancel = CancellationToken::new();
            let r = decode(body.as_slice(), &plan, target, cap, &cancel);
            match &r {
                Ok(d) => {
                    let jma_poller::download::decode::Staged::Dir(dir) = &d.staged else {
                        panic!("an archive staged a file");
                    };
                    check(dir.path(), true, keep.then_some("keep.tar.gz"));
                }
                Err(DecodeError::TooLarge { limit }) => assert_eq!(*limit, cap),
                Err(_) => {}
            }
            if expected.is_some() && (body.len() as u64) <= cap + cap / 16 + 64 * 1024 {
                assert!(r.is_ok(), "plain safe members refused: {r:?}");
            }
            drop(r);
            assert_empty(target, "after decode");
        }
    });
});
