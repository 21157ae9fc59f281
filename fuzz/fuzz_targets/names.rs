//! The file-name sanitiser and everything that builds paths from API names.
//!
//! Input: `split, text` — `text` (lossy UTF-8) is cut at `split` into a name and an item id.
//!
//! Properties: an accepted name is one normal path component equal to itself, without '/',
//! '\\', NUL or control characters, not "." or "..", at most 255 bytes; a path built from
//! accepted names has only normal components; `disambiguate` keeps the folder and gives a
//! different leaf that is one normal component of at most 255 bytes.

#![no_main]

use std::path::{Component, Path};

use fuzz_support::assert_one_component;
use jma_poller::download::plan::disambiguate;
use jma_poller::sink::layout::jmafile as jmafile_rel_path;
use jma_poller::storage::safe_component;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut at = (split as usize * 2).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let (name, id) = text.split_at(at);

    for n in [name, id, text.as_ref()] {
        if let Ok(ok) = safe_component(n) {
            assert_eq!(ok, n);
            assert_one_component(n);
        }
    }

    let received = time::macros::datetime!(2024-05-25 08:35:31 UTC);
    if let Ok(rel) = jmafile_rel_path(name, received, id) {
        let comps: Vec<Component> = Path::new(&rel).components().collect();
        assert_eq!(comps.len(), 4, "{rel:?}");
        assert!(
            comps.iter().all(|c| matches!(c, Component::Normal(_))),
            "{rel:?}"
        );
    }

    // The downloader disambiguates an accepted leaf inside a folder, or a bare leaf.
    if safe_component(name).is_ok() {
        for rel in [format!("jmafile/c/2024-05-25/{name}"), name.to_owned()] {
            let out = disambiguate(&rel, id);
            let (dir, _) = rel.rsplit_once('/').unwrap_or(("", &rel));
            let (out_dir, leaf) = out.rsplit_once('/').unwrap_or(("", &out));
            assert_eq!(out_dir, dir, "the folder changed: {rel:?} -> {out:?}");
            assert_ne!(leaf, name, "not disambiguated: {rel:?} -> {out:?}");
            assert!(
                leaf.len() <= 255,
                "disambiguated leaf is {} bytes: {rel:?} (id {id:?}) -> {leaf:?}",
                leaf.len()
            );
            // Not `safe_component(leaf)`: a leaf like "x..~tag" holds ".." without being a
            // parent reference, which that check refuses on purpose.
            assert_one_component(leaf);
        }
    }
});
