//! What to do with a listed item, decided once when it is listed and stored with it: how the
//! body is compressed, which file(s) it becomes, their announced lengths, and the final path.
//! An item that cannot be handled safely (hostile name, untrusted host, unknown compression)
//! is refused here, before any request is made.

use url::Url;

use crate::api::models::{ArchiveItem, JmaFileItem};
use crate::api::trust::TrustedHosts;
use crate::sink::layout;
use crate::storage::safe_component;

pub use crate::model::plan::{Child, Compression, Layout, NAME_MAX, Plan, disambiguate};

/// A listed item ready to store: either downloadable, or refused with a reason.
#[derive(Debug, Clone)]
pub struct Planned {
    pub plan: Plan,
    pub rel_path: String,
}

/// Why an item is refused without being fetched. Permanent: the same input gives the same answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{0}")]
    Name(#[from] crate::storage::NameError),
    #[error(
        "untrusted host: {0} is not in api.trusted_hosts, so it is not fetched (the key is never sent there)"
    )]
    UntrustedHost(String),
    #[error("bad url {0:?}")]
    BadUrl(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("announced size {size} bytes exceeds download.max_size ({max} bytes)")]
    TooLarge { size: u64, max: u64 },
}

/// Strips one of `suffixes` (case-insensitive) from `name`.
fn strip_any<'a>(name: &'a str, suffixes: &[&str]) -> &'a str {
    let lower = name.to_ascii_lowercase();
    for s in suffixes {
        if lower.ends_with(s) && lower.len() > s.len() {
            return &name[..name.len() - s.len()];
        }
    }
    name
}

pub fn plan_jmafile(
    item: &JmaFileItem,
    trusted: &TrustedHosts,
    max_size: u64,
) -> Result<Planned, PlanError> {
    let url = Url::parse(&item.url).map_err(|_| PlanError::BadUrl(item.url.clone()))?;
    if !trusted.allows(&url) {
        return Err(PlanError::UntrustedHost(
            url.host_str().unwrap_or("?").to_owned(),
        ));
    }
    let compression =
        Compression::parse(item.compression.as_deref()).map_err(PlanError::Unsupported)?;
    let first = item
        .headers
        .first()
        .ok_or_else(|| PlanError::Unsupported("item has no headers".into()))?;
    safe_component(&first.filename)?;
    let is_concat = item.format.eq_ignore_ascii_case("concat");
    let (leaf, layout) = if is_concat {
        if item.headers.len() < 2 {
            return Err(PlanError::Unsupported(
                "concat item lists no children (headers[1..] is empty)".into(),
            ));
        }
        let mut children: Vec<Child> = Vec::new();
        for h in &item.headers[1..] {
            let name = safe_component(&h.filename)?.to_owned();
            if children.iter().any(|c| c.name == name) {
                return Err(PlanError::Unsupported(format!(
                    "concat children share the name {name:?}"
                )));
            }
            children.push(Child {
                name,
                length: h.length,
            });
        }
        let total: u64 = children.iter().map(|c| c.length).sum();
        if total > max_size {
            return Err(PlanError::TooLarge {
                size: total,
                max: max_size,
            });
        }
        let folder = strip_any(&first.filename, &[".tar.gz", ".tgz", ".tar", ".gz", ".zip"]);
        (folder.to_owned(), Layout::Concat { children })
    } else {
        let leaf = match compression {
            Compression::Gzip => strip_any(&first.filename, &[".gz"]),
            Compression::Zip => strip_any(&first.filename, &[".zip"]),
            Compression::None => &first.filename,
        };
        (
            leaf.to_owned(),
            Layout::Single {
                length: first.length,
            },
        )
    };
    let rel_path = layout::jmafile(&item.classification, item.received_time, &leaf)?;
    Ok(Planned {
        plan: Plan {
            compression,
            layout,
        },
        rel_path,
    })
}

/// A daily archive: unpacked into its day's folder ([`layout::archive`]).
pub fn plan_archive(
    item: &ArchiveItem,
    trusted: &TrustedHosts,
    keep_tarball: bool,
) -> Result<Planned, PlanError> {
    let url = Url::parse(&item.url).map_err(|_| PlanError::BadUrl(item.url.clone()))?;
    if !trusted.allows(&url) {
        return Err(PlanError::UntrustedHost(
            url.host_str().unwrap_or("?").to_owned(),
        ));
    }
    let rel_path = layout::archive(&item.classification, item.date)?;
    let keep_tarball =
        keep_tarball.then(|| layout::archive_tarball(&item.classification, item.date));
    Ok(Planned {
        plan: Plan {
            compression: Compression::Gzip,
            layout: Layout::Archive {
                file_size: item.file_size,
                data_count: item.data_count,
                keep_tarball,
            },
        },
        rel_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::models::FileHeader;

    fn header(name: &str, length: u64) -> FileHeader {
        FileHeader {
            time: None,
            flags: None,
            author: None,
            format: None,
            length,
            filename: name.into(),
            values: None,
        }
    }

    fn item(
        format: &str,
        compression: Option<&str>,
        headers: Vec<FileHeader>,
        url: &str,
    ) -> JmaFileItem {
        JmaFileItem {
            id: "id1".into(),
            serial: 1,
            classification: "jmafile.srf-rrp".into(),
            headers,
            received_time: time::macros::datetime!(2024-05-25 23:59:59 UTC),
            format: format.into(),
            compression: compression.map(Into::into),
            url: url.into(),
        }
    }

    fn trusted() -> TrustedHosts {
        TrustedHosts::new(
            &Url::parse("https://api.dmdata.jp").unwrap(),
            &["*.api.dmdata.jp".into()],
        )
        .unwrap()
    }

    const URL: &str = "https://jmafiledata.api.dmdata.jp/v1/id1";

    #[test]
    fn single_gzip_drops_the_suffix() {
        let p = plan_jmafile(
            &item(
                "grib2",
                Some("gzip"),
                vec![header("a_grib2.bin.gz", 10)],
                URL,
            ),
            &trusted(),
            1 << 30,
        )
        .unwrap();
        assert_eq!(p.rel_path, "jmafile/jmafile.srf-rrp/2024-05-25/a_grib2.bin");
        assert_eq!(p.plan.layout, Layout::Single { length: 10 });
    }

    #[test]
    fn concat_becomes_a_folder() {
        let p = plan_jmafile(
            &item(
                "concat",
                Some("gzip"),
                vec![
                    header("x_shape.tar.gz", 126),
                    header("a.dbf", 226),
                    header("a.shp", 100),
                    header("a.shx", 100),
                ],
                URL,
            ),
            &trusted(),
            1 << 30,
        )
        .unwrap();
        assert_eq!(p.rel_path, "jmafile/jmafile.srf-rrp/2024-05-25/x_shape");
        assert_eq!(p.plan.announced_output(), Some(426));
    }

    #[test]
    fn refusals() {
        let t = trusted();
        let bad_name = item("grib2", None, vec![header("../../etc/passwd", 1)], URL);
        assert!(matches!(
            plan_jmafile(&bad_name, &t, 1 << 30),
            Err(PlanError::Name(_))
        ));
        let bad_child = item(
            "concat",
            None,
            vec![header("p.tar", 1), header("/abs", 1)],
            URL,
        );
        assert!(matches!(
            plan_jmafile(&bad_child, &t, 1 << 30),
            Err(PlanError::Name(_))
        ));
        let evil = item(
            "grib2",
            None,
            vec![header("a.bin", 1)],
            "https://evil.example/v1/id1",
        );
        assert!(matches!(
            plan_jmafile(&evil, &t, 1 << 30),
            Err(PlanError::UntrustedHost(_))
        ));
        let bz = item("grib2", Some("bzip2"), vec![header("a.bin", 1)], URL);
        assert!(matches!(
            plan_jmafile(&bz, &t, 1 << 30),
            Err(PlanError::Unsupported(_))
        ));
        let big = item(
            "concat",
            None,
            vec![header("p.tar", 1), header("a", 600), header("b", 600)],
            URL,
        );
        assert!(matches!(
            plan_jmafile(&big, &t, 1000),
            Err(PlanError::TooLarge { .. })
        ));
        let dup = item(
            "concat",
            None,
            vec![header("p.tar", 1), header("a", 1), header("a", 1)],
            URL,
        );
        assert!(matches!(
            plan_jmafile(&dup, &t, 1000),
            Err(PlanError::Unsupported(_))
        ));
    }

    #[test]
    fn disambiguation_stays_within_the_name_limit() {
        let long = format!("d/{}.bin", "x".repeat(250));
        let d = disambiguate(&long, "abcdefghijklmnop");
        let leaf = d.rsplit('/').next().unwrap();
        assert!(leaf.len() <= 255, "{}", leaf.len());
        assert!(leaf.ends_with(".~abcdefghij.bin"));
        let long = format!("d/{}", "日".repeat(90));
        assert!(disambiguate(&long, "q").rsplit('/').next().unwrap().len() <= 255);
    }

    #[test]
    fn disambiguation_keeps_the_extension() {
        assert_eq!(
            disambiguate("d/a.bin", "Xy-12_AbCdEfGh"),
            "d/a.~Xy12AbCdEf.bin"
        );
        assert_eq!(disambiguate("d/folder", "q"), "d/folder.~q");
    }

    #[test]
    fn a_kept_tarball_name_stays_within_the_name_limit() {
        let item = |classification: String| ArchiveItem {
            id: "a1".into(),
            serial: None,
            classification,
            date: time::macros::date!(2024 - 05 - 25),
            data_count: None,
            file_size: 1,
            url: URL.into(),
        };
        let name =
            |item: &ArchiveItem| match plan_archive(item, &trusted(), true).unwrap().plan.layout {
                Layout::Archive { keep_tarball, .. } => keep_tarball.unwrap(),
                other => panic!("{other:?}"),
            };
        assert_eq!(
            name(&item("telegram.earthquake".into())),
            "20240525-telegram.earthquake.tar.gz"
        );
        let long = name(&item("気".repeat(85)));
        assert!(long.len() <= 255, "{} bytes", long.len());
        assert!(long.starts_with("20240525-気") && long.ends_with("気.tar.gz"));
    }
}
