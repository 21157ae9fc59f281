//! The list-response parser: arbitrary bytes as a `ListPage`, each `items[]` value as a
//! JmaFile item, an archive item and a socket item, then through the planners. Properties: no
//! panic; whatever the planners accept is a safe relative path on a trusted https host.

#![no_main]

use std::path::{Component, Path};
use std::sync::OnceLock;

use jma_poller::api::models::{
    ArchiveItem, ErrorEnvelope, JmaFileItem, ListPage, SocketItem, parse_date, parse_time,
    raw_identity,
};
use jma_poller::api::trust::TrustedHosts;
use jma_poller::download::plan::{Layout, plan_archive, plan_jmafile};
use jma_poller::storage::safe_component;
use libfuzzer_sys::fuzz_target;
use url::Url;

const MAX_SIZE: u64 = 1 << 20;

fn trusted() -> &'static TrustedHosts {
    static T: OnceLock<TrustedHosts> = OnceLock::new();
    T.get_or_init(|| {
        TrustedHosts::new(
            &Url::parse("https://api.dmdata.jp").unwrap(),
            &["*.api.dmdata.jp".into()],
        )
        .unwrap()
    })
}

/// `rel` is `n` safe, normal components joined by '/'.
fn assert_safe_rel(rel: &str, n: usize) {
    let parts: Vec<&str> = rel.split('/').collect();
    assert_eq!(parts.len(), n, "{rel:?}");
    for p in &parts {
        assert!(
            safe_component(p).is_ok(),
            "unsafe component {p:?} in {rel:?}"
        );
    }
    let comps: Vec<Component> = Path::new(rel).components().collect();
    assert_eq!(comps.len(), n, "{rel:?}");
    assert!(
        comps.iter().all(|c| matches!(c, Component::Normal(_))),
        "{rel:?}"
    );
}

fn assert_trusted(url: &str) {
    let u = Url::parse(url).expect("planned url parses");
    assert_eq!(u.scheme(), "https", "{url:?}");
    let host = u.host_str().unwrap().to_ascii_lowercase();
    assert!(
        host == "api.dmdata.jp" || host.ends_with(".api.dmdata.jp"),
        "planned an untrusted host: {url:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_time(s);
        let _ = parse_date(s);
    }
    let _ = serde_json::from_slice::<ErrorEnvelope>(data);
    let Ok(page) = serde_json::from_slice::<ListPage>(data) else {
        return;
    };
    for raw in &page.items {
        let _ = raw_identity(raw);
        let _ = serde_json::from_value::<SocketItem>(raw.clone());
        if let Ok(item) = serde_json::from_value::<JmaFileItem>(raw.clone())
            && let Ok(planned) = plan_jmafile(&item, trusted(), MAX_SIZE)
        {
            assert_trusted(&item.url);
            assert!(planned.rel_path.starts_with("jmafile/"));
            assert_safe_rel(&planned.rel_path, 4);
            if let Layout::Concat { children } = &planned.plan.layout {
                assert!(!children.is_empty());
                let mut names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
                for n in &names {
                    assert_safe_rel(n, 1);
                }
                names.sort();
                names.dedup();
                assert_eq!(names.len(), children.len(), "duplicate child names");
                let total: u64 = children.iter().map(|c| c.length).sum();
                assert!(total <= MAX_SIZE);
            }
        }
        if let Ok(item) = serde_json::from_value::<ArchiveItem>(raw.clone()) {
            for keep in [false, true] {
                if let Ok(planned) = plan_archive(&item, trusted(), keep) {
                    assert_trusted(&item.url);
                    assert!(planned.rel_path.starts_with("archive/"));
                    assert_safe_rel(&planned.rel_path, 3);
                    if let Layout::Archive {
                        keep_tarball: Some(name),
                        ..
                    } = &planned.plan.layout
                    {
                        // A classification ending in '.' gives "x..tar.gz": odd, not unsafe.
                        fuzz_support::assert_one_component(name);
                    }
                }
            }
        }
    }
});
