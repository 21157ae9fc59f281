//! The provider's catalog of jmafile products, embedded from `catalog/dmdata-catalog.tsv` (a
//! re-tabulation of the official docs at the commit named in its header, kept in the repository
//! because a user's checkout and CI have nothing else): which classification carries which data
//! identifiers (HEADER_VALUES, what the list's `type` filter matches), the file-name patterns,
//! typical sizes and cadence.
//!
//! Two users: the PuLL planner, which must tell a *full* data identifier (upstream matches 2–5
//! of them exactly) from a prefix (one value is a prefix match), and the simulator, which names
//! its items like the real ones.
//!
//! Many identifiers are patterns: their variable parts are written as placeholders in the docs
//! (`yyyyMMddhh…` dates, `N#`, `###`, `NNN`, `0XX`, `@@@`, `hh(-hh)`, `cccc`/`nnn`, `tttt`). An
//! entry is a full identifier when it matches one completely, each placeholder standing for its
//! variable part (`OBS_AMDS_Rjp_N1` is one, `OBS_AMDS_Rjp_N` is only a prefix). Some identifiers
//! are prefixes of others: `OBS_AMDSCC` is the JMBSC bundle's identifier and a prefix of
//! `OBS_AMDSCC_Rjp_N#`.
//!
//! The file keeps the docs' quirks as they are (its header lists them); they are handled here:
//! * `FLA_GPV_Rjp_ANAL` is listed under `jmafile.srf-p10` in the docs' table but under
//!   `jmafile.fla-ajp` in their list; the row says `jmafile.fla-ajp` and is taken as it is.
//! * jf06112's file name reads `Z__RJTD_` (no `C`); it is read as `Z__C_RJTD_` like every other.
//! * Cells abbreviate with `..._` ("the previous identifier with this ending"); these are
//!   expanded against the cell's previous identifier, and file names against the row's
//!   identifiers.
//! * The weather-chart row (jf04100) gives only examples of a large family (`MET_CHT_…`); any
//!   entry of that family is taken as known.

use std::sync::OnceLock;

use time::OffsetDateTime;

/// The catalog as shipped (with its header naming the docs commit it was read at).
pub const TSV: &str = include_str!("../catalog/dmdata-catalog.tsv");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("catalog line {line}: {detail}")]
    Line { line: usize, detail: String },
    #[error("catalog: no header line")]
    NoHeader,
}

/// The embedded catalog, parsed once.
pub fn get() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        // The embedded file is parsed by a unit test on every build, so this cannot fail in a
        // shipped binary; should it ever, the planner treats every entry as a prefix (the
        // safe reading: nothing is filtered away) and says so once.
        Catalog::parse(TSV).unwrap_or_else(|e| {
            tracing::error!(event = "catalog_invalid", error = %e, "the built-in jmafile catalog does not parse; every jmafile.types entry is treated as a prefix");
            Catalog::default()
        })
    })
}

/// What a placeholder stands for; it decides what matches it and how the simulator fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `yyyyMMddhhmmss`, `yyyyMMddhhmm`, `yyyyMMddhh`: a UTC time, this many digits.
    Time(usize),
    /// `###` (and `nnn`): a number within a series, e.g. a basin (`RJsuikei###`).
    Seq(usize),
    /// `NNN`, `0XX`: the number of files in a bundle.
    Count(usize),
    /// `@@@`, `cccc`: a code of letters or digits.
    Code(usize),
    /// `tttt`: a typhoon number.
    Typhoon(usize),
    /// `hh` in `FHhh(-hh)`: a forecast hour.
    Hour,
    /// `#` in `N#`: one or more digits.
    Run,
}

impl Slot {
    fn width(self) -> Option<usize> {
        match self {
            Slot::Time(n) | Slot::Seq(n) | Slot::Count(n) | Slot::Code(n) | Slot::Typhoon(n) => {
                Some(n)
            }
            Slot::Hour => Some(2),
            Slot::Run => None,
        }
    }

    fn accepts(self, b: u8) -> bool {
        match self {
            Slot::Code(_) => b.is_ascii_alphanumeric(),
            _ => b.is_ascii_digit(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(u8),
    Slot(Slot),
    /// `(-hh)`: present or not.
    Optional(Vec<Token>),
}

/// Placeholders as the docs spell them, longest first (the scan takes the first that fits).
const PLACEHOLDERS: &[(&str, &[Slot])] = &[
    ("yyyyMMddhhmmss", &[Slot::Time(14)]),
    ("YYYYMMDDhhmmss", &[Slot::Time(14)]),
    ("yyyyMMddhhmm", &[Slot::Time(12)]),
    ("yyyyMMddhh", &[Slot::Time(10)]),
    ("ccccnnn", &[Slot::Code(4), Slot::Seq(3)]),
    ("tttt", &[Slot::Typhoon(4)]),
    ("###", &[Slot::Seq(3)]),
    ("@@@", &[Slot::Code(3)]),
    ("NNN", &[Slot::Count(3)]),
    ("0XX", &[Slot::Count(3)]),
];

/// A data identifier or a piece of a file name, with its placeholders understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn parse(text: &str) -> Pattern {
        Pattern {
            text: text.to_owned(),
            tokens: tokenize(text),
        }
    }

    /// As the docs write it, placeholders included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when some part varies (a pattern, not one literal identifier).
    pub fn has_placeholders(&self) -> bool {
        self.tokens.iter().any(|t| !matches!(t, Token::Lit(_)))
    }

    /// `s` matches completely, each placeholder standing for its variable part.
    pub fn matches(&self, s: &str) -> bool {
        walk(&self.tokens, s.as_bytes()).full
    }

    /// `s` is the beginning of something that matches (a full match counts too).
    pub fn admits_prefix(&self, s: &str) -> bool {
        walk(&self.tokens, s.as_bytes()).prefix
    }

    /// A concrete value: placeholders filled from `fill` (the simulator's names).
    pub fn fill(&self, fill: &Fill) -> String {
        let mut out = String::with_capacity(self.text.len() + 8);
        fill_tokens(&self.tokens, fill, &mut out);
        out
    }
}

/// Values for a pattern's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Fill {
    pub time: OffsetDateTime,
    /// `###`, `nnn`, `N#`, forecast hours.
    pub seq: u32,
    /// `NNN`, `0XX`: files in the bundle.
    pub count: u32,
    /// `@@@`, `cccc`, `tttt`.
    pub code: u32,
}

fn tokenize(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    'scan: while i < b.len() {
        let rest = &text[i..];
        for (word, slots) in PLACEHOLDERS {
            if rest.starts_with(word) {
                out.extend(slots.iter().map(|s| Token::Slot(*s)));
                i += word.len();
                continue 'scan;
            }
        }
        if rest.starts_with("(-hh)") {
            out.push(Token::Optional(vec![
                Token::Lit(b'-'),
                Token::Slot(Slot::Hour),
            ]));
            i += 5;
        } else if rest.starts_with("hh(-hh)") {
            // `FHhh(-hh)`: only here is `hh` a placeholder (`Phhlv` is a literal word).
            out.push(Token::Slot(Slot::Hour));
            i += 2;
        } else if rest.starts_with("N#") {
            out.push(Token::Lit(b'N'));
            out.push(Token::Slot(Slot::Run));
            i += 2;
        } else {
            out.push(Token::Lit(b[i]));
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, Copy, Default)]
struct Walk {
    full: bool,
    prefix: bool,
}

impl Walk {
    fn or(self, other: Walk) -> Walk {
        Walk {
            full: self.full || other.full,
            prefix: self.prefix || other.prefix,
        }
    }
}

/// Matches `s` against `tokens`: completely (`full`), or as the start of a match (`prefix`).
fn walk(tokens: &[Token], s: &[u8]) -> Walk {
    let Some((first, rest)) = tokens.split_first() else {
        return Walk {
            full: s.is_empty(),
            prefix: s.is_empty(),
        };
    };
    if s.is_empty() {
        // Out of input: a prefix of anything still ahead; a full match only if what is
        // left may be absent.
        let optional_rest = tokens.iter().all(|t| matches!(t, Token::Optional(_)));
        return Walk {
            full: optional_rest,
            prefix: true,
        };
    }
    match first {
        Token::Lit(c) => {
            if s[0] == *c {
                walk(rest, &s[1..])
            } else {
                Walk::default()
            }
        }
        Token::Optional(inner) => {
            let mut with: Vec<Token> = inner.clone();
            with.extend_from_slice(rest);
            walk(&with, s).or(walk(rest, s))
        }
        Token::Slot(slot) => match slot.width() {
            Some(n) => {
                let take = n.min(s.len());
                if !s[..take].iter().all(|b| slot.accepts(*b)) {
                    return Walk::default();
                }
                if take < n {
                    // The input ends inside the placeholder.
                    return Walk {
                        full: false,
                        prefix: true,
                    };
                }
                walk(rest, &s[n..])
            }
            None => {
                let digits = s.iter().take_while(|b| slot.accepts(**b)).count();
                let mut out = Walk::default();
                for k in 1..=digits {
                    out = out.or(walk(rest, &s[k..]));
                }
                if digits == s.len() && digits > 0 {
                    out.prefix = true;
                }
                out
            }
        },
    }
}

fn fill_tokens(tokens: &[Token], fill: &Fill, out: &mut String) {
    let mut hour = 3 + (fill.seq % 6) * 3;
    for t in tokens {
        match t {
            Token::Lit(c) => out.push(*c as char),
            Token::Optional(inner) => {
                // A range (`FH03-06`) for every other item.
                if fill.seq.is_multiple_of(2) {
                    hour += 3;
                    fill_tokens_with_hour(inner, hour, fill, out);
                }
            }
            Token::Slot(Slot::Hour) => out.push_str(&format!("{hour:02}")),
            Token::Slot(slot) => out.push_str(&fill_slot(*slot, fill)),
        }
    }
}

fn fill_tokens_with_hour(tokens: &[Token], hour: u32, fill: &Fill, out: &mut String) {
    for t in tokens {
        match t {
            Token::Slot(Slot::Hour) => out.push_str(&format!("{hour:02}")),
            other => fill_tokens(std::slice::from_ref(other), fill, out),
        }
    }
}

fn fill_slot(slot: Slot, fill: &Fill) -> String {
    let t = fill.time.to_offset(time::UtcOffset::UTC);
    match slot {
        Slot::Time(n) => {
            let full = format!(
                "{:04}{:02}{:02}{:02}{:02}{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            full[..n.min(full.len())].to_owned()
        }
        Slot::Seq(n) => padded(fill.seq, n),
        Slot::Count(n) => padded(fill.count, n),
        Slot::Code(n) => padded(100 + fill.code % 900, n),
        Slot::Typhoon(n) => padded((t.year() as u32 % 100) * 100 + 1 + fill.code % 30, n),
        Slot::Hour => format!("{:02}", 3 + (fill.seq % 6) * 3),
        Slot::Run => (1 + fill.seq % 2).to_string(),
    }
}

fn padded(v: u32, width: usize) -> String {
    let m = 10u64.pow(width as u32);
    format!("{:0width$}", u64::from(v) % m)
}

/// How a concat item's children are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Children {
    /// Not a concat source.
    None,
    /// The parent's stem plus a suffix and each extension (`_shape` + `dbf`, `shp`, `shx`).
    Named { suffix: String, exts: Vec<String> },
    /// A JMBSC bundle (`Z__C_COMP_…_NNN.tar.gz`) of up to `max` files named like the row's
    /// single files whose identifier starts with the bundle's.
    Bundle { max: u32 },
}

/// A file-name pattern: `Z__C_{author}_{yyyyMMddhhmmss}_{identifier}_{tail}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePattern {
    /// As read (after expanding the docs' abbreviations).
    pub text: String,
    /// `RJTD`, or `COMP` for bundles.
    pub author: String,
    /// The identifier part.
    pub core: Pattern,
    /// The last `_` segment: `grib2.bin.gz`, `bufr4.bin`, `shape.tar.gz`, `0XX.tar.gz` …
    pub tail: String,
    pub children: Children,
}

impl FilePattern {
    /// `gzip` when the received file is gzip-compressed (`.gz`), as the list's `compression`.
    pub fn compression(&self) -> Option<&'static str> {
        self.tail.ends_with(".gz").then_some("gzip")
    }

    /// A tar on the JMA side, served as `format: concat`.
    pub fn is_concat(&self) -> bool {
        self.tail.ends_with(".tar.gz") || self.tail.ends_with(".tar")
    }

    /// The file name for `identifier` (a concrete value of `core`) at `fill`.
    pub fn name(&self, identifier: &str, fill: &Fill) -> String {
        format!(
            "Z__C_{}_{}_{identifier}_{}",
            self.author,
            fill_slot(Slot::Time(14), fill),
            Pattern::parse(&self.tail).fill(fill)
        )
    }
}

/// One row: a product of one classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub classification: String,
    /// The docs page (`jf03011`).
    pub page: String,
    pub title: String,
    /// Data identifiers (HEADER_VALUES), abbreviations expanded.
    pub identifiers: Vec<Pattern>,
    pub files: Vec<FilePattern>,
    /// The format column as written (`GRIB2`, `BUFR4 in tar.gz -> concat (<=99 children)` …).
    pub format: String,
    /// Typical size, as written (`~600KB/file`, `up to ~5MB`, `varies`).
    pub size: String,
    /// Cadence, as written (`every 5 min (+30 s)`, `hourly`, `daily ~10:40`).
    pub cadence: String,
    /// The row gives only examples of a larger family (weather charts): any identifier
    /// starting with this is taken as known.
    pub family: Option<String>,
}

impl Product {
    /// The typical size in bytes: the largest figure in the size column (`100-500KB` → 500 kB),
    /// or None (`varies`, `n/a`).
    pub fn typical_bytes(&self) -> Option<u64> {
        let s = self.size.as_bytes();
        let mut best: Option<u64> = None;
        let mut i = 0;
        while i < s.len() {
            if !s[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < s.len() && (s[i].is_ascii_digit() || s[i] == b'.') {
                i += 1;
            }
            let value: f64 = self.size[start..i].parse().unwrap_or(0.0);
            // The unit follows the number, or the end of a range (`100-500KB`).
            let unit = self.size[i..]
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
                .to_ascii_uppercase();
            let factor = if unit.starts_with("MB") {
                1_000_000.0
            } else if unit.starts_with("KB") {
                1_000.0
            } else {
                continue;
            };
            let bytes = (value * factor) as u64;
            best = Some(best.map_or(bytes, |b| b.max(bytes)));
        }
        best
    }

    /// How often the product comes, when the cadence column says it plainly.
    pub fn every(&self) -> Option<std::time::Duration> {
        use std::time::Duration;
        let c = self.cadence.to_ascii_lowercase();
        if c.contains("every minute") {
            return Some(Duration::from_secs(60));
        }
        if c.starts_with("3x daily") {
            return Some(Duration::from_secs(8 * 3600));
        }
        if c.starts_with("hourly") {
            return Some(Duration::from_secs(3600));
        }
        if c.starts_with("daily") {
            return Some(Duration::from_secs(86_400));
        }
        let digits: String = c
            .trim_start_matches("every ")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let after = c.trim_start_matches("every ")[digits.len()..].trim_start();
        match digits.parse::<u64>() {
            Ok(n) if after.starts_with("min") => Some(Duration::from_secs(n * 60)),
            _ => None,
        }
    }
}

/// How the catalog reads a `jmafile.types` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Matches a catalog identifier completely: upstream matches it exactly among 2–5 values.
    Exact { classification: String },
    /// The start of catalog identifiers (of these classifications).
    Prefix { classifications: Vec<String> },
    /// Matches nothing the catalog knows (a typo, or a product newer than the catalog).
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// `# Source: …`: the docs commit the file was read at.
    pub source: String,
    pub products: Vec<Product>,
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        let mut header = false;
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(src) = comment.trim().strip_prefix("Source:") {
                    catalog.source = src.trim().to_owned();
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            if !header {
                if cols.first() != Some(&"classification") {
                    return Err(CatalogError::NoHeader);
                }
                header = true;
                continue;
            }
            if cols.len() != 8 {
                return Err(CatalogError::Line {
                    line: line_no,
                    detail: format!("{} columns, expected 8", cols.len()),
                });
            }
            let product = parse_row(&cols).map_err(|detail| CatalogError::Line {
                line: line_no,
                detail,
            })?;
            catalog.products.push(product);
        }
        if !header {
            return Err(CatalogError::NoHeader);
        }
        Ok(catalog)
    }

    /// Every (classification, identifier) pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &Pattern)> {
        self.products.iter().flat_map(|p| {
            p.identifiers
                .iter()
                .map(move |i| (p.classification.as_str(), i))
        })
    }

    /// The identifier `entry` is, completely (placeholders matching their variable parts).
    pub fn exact(&self, entry: &str) -> Option<(&Product, &Pattern)> {
        self.products.iter().find_map(|p| {
            p.identifiers
                .iter()
                .find(|i| i.matches(entry))
                .map(|i| (p, i))
        })
    }

    /// Identifiers that start with `entry` (it is a prefix of some of their values).
    pub fn prefixed_by(&self, entry: &str) -> Vec<(&Product, &Pattern)> {
        let mut out = Vec::new();
        for p in &self.products {
            for i in &p.identifiers {
                if i.admits_prefix(entry) {
                    out.push((p, i));
                }
            }
        }
        out
    }

    /// Full identifier, prefix, or unknown.
    pub fn classify(&self, entry: &str) -> EntryKind {
        if let Some((p, _)) = self.exact(entry) {
            return EntryKind::Exact {
                classification: p.classification.clone(),
            };
        }
        let mut classifications: Vec<String> = self
            .prefixed_by(entry)
            .into_iter()
            .map(|(p, _)| p.classification.clone())
            .collect();
        for p in &self.products {
            if let Some(f) = &p.family
                && (entry.starts_with(f.as_str()) || f.starts_with(entry))
            {
                classifications.push(p.classification.clone());
            }
        }
        classifications.dedup();
        if classifications.is_empty() {
            EntryKind::Unknown
        } else {
            classifications.sort();
            classifications.dedup();
            EntryKind::Prefix { classifications }
        }
    }

    /// What a bundle holds: the single (non-bundle) files of the same classification whose
    /// identifier starts with the bundle's (`OBS_AMDSCC_Rjp_N#` in `OBS_AMDSCC_0XX.tar.gz`).
    pub fn bundle_members(&self, classification: &str, bundle: &FilePattern) -> Vec<&FilePattern> {
        self.products
            .iter()
            .filter(|p| p.classification == classification)
            .flat_map(|p| &p.files)
            .filter(|f| {
                f.children == Children::None
                    && f.core.text().len() > bundle.core.text().len()
                    && f.core.text().starts_with(bundle.core.text())
            })
            .collect()
    }

    /// The product and file pattern whose identifier part matches `identifier` (a concrete
    /// value), for naming a file like the real ones.
    pub fn file_for(&self, identifier: &str) -> Option<(&Product, &FilePattern)> {
        self.products.iter().find_map(|p| {
            p.files
                .iter()
                .find(|f| f.core.matches(identifier))
                .map(|f| (p, f))
        })
    }
}

fn parse_row(cols: &[&str]) -> Result<Product, String> {
    let (classification, page, title, ids, format, files, size, cadence) = (
        cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7],
    );
    if !classification.starts_with("jmafile.") {
        return Err(format!("classification {classification:?}"));
    }
    let (identifiers, family) = parse_identifiers(ids)?;
    let files = parse_files(files, format, &identifiers)?;
    let mut identifiers: Vec<Pattern> = identifiers.iter().map(|i| Pattern::parse(i)).collect();
    if family.is_some() {
        // Only examples are given: the file names' identifiers are examples too.
        for f in &files {
            if !identifiers.iter().any(|i| i.text() == f.core.text()) {
                identifiers.push(f.core.clone());
            }
        }
    }
    Ok(Product {
        classification: classification.to_owned(),
        page: page.to_owned(),
        title: title.to_owned(),
        identifiers,
        files,
        format: format.to_owned(),
        size: size.to_owned(),
        cadence: cadence.to_owned(),
        family,
    })
}

/// Drops a trailing ` (…)` note (`(from 2026-02-25)`, `(sic)`, `(0XX = number of files)`).
fn strip_note(s: &str) -> &str {
    let s = s.trim();
    match s.rfind(" (") {
        Some(at) if s.ends_with(')') => s[..at].trim(),
        _ => s,
    }
}

/// The HEADER_VALUES cell: identifiers separated by ` ; `, `..._` abbreviations, notes, or
/// `(see jf04100, e.g. X)` for a family known only by example.
fn parse_identifiers(cell: &str) -> Result<(Vec<String>, Option<String>), String> {
    let cell = cell.trim();
    if let Some(inner) = cell.strip_prefix("(see ") {
        let example = inner
            .split("e.g. ")
            .nth(1)
            .map(|e| e.trim_end_matches(')').trim())
            .filter(|e| !e.is_empty())
            .ok_or_else(|| format!("identifier cell {cell:?} has no example"))?;
        // The family: the example's first two segments (`MET_CHT_`).
        let family: String = example
            .split('_')
            .take(2)
            .map(|s| format!("{s}_"))
            .collect();
        return Ok((vec![example.to_owned()], Some(family)));
    }
    let mut out: Vec<String> = Vec::new();
    for part in cell.split(';') {
        let part = strip_note(part);
        if part.is_empty() {
            continue;
        }
        let id = match part.strip_prefix("..._") {
            Some(ending) => {
                let prev = out
                    .last()
                    .ok_or_else(|| format!("{part:?} abbreviates nothing"))?;
                expand(prev, ending)
            }
            None => part.to_owned(),
        };
        if id.contains(char::is_whitespace) || id.contains("...") {
            return Err(format!("identifier {id:?} is not one word"));
        }
        out.push(id);
    }
    if out.is_empty() {
        return Err(format!("no identifier in {cell:?}"));
    }
    Ok((out, None))
}

/// The alphabetic start of a segment: its kind (`Fper` of `Fper10min`, `FH` of `FH01-06`).
fn kind(segment: &str) -> &str {
    let end = segment
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(segment.len());
    &segment[..end]
}

/// `..._ENDING` after `prev`: ENDING replaces `prev` from the segment of the same kind as its
/// first segment (`..._Fper10min_FH01-06` after `…_Proi_Fper30min_FH`); failing that, it is
/// put in before the segment its last one replaces (`..._RJsuikei###_ANAL` after
/// `…_Aper10min_ANAL`).
fn expand(prev: &str, ending: &str) -> String {
    let segs: Vec<&str> = prev.split('_').collect();
    let new: Vec<&str> = ending.split('_').collect();
    let first = kind(new[0]);
    let last = kind(new[new.len() - 1]);
    let keep = segs
        .iter()
        .position(|s| !first.is_empty() && kind(s) == first)
        .or_else(|| {
            segs.iter()
                .rposition(|s| !last.is_empty() && kind(s) == last)
        })
        .unwrap_or(segs.len());
    let mut out: Vec<&str> = segs[..keep].to_vec();
    out.extend(new);
    out.join("_")
}

/// The file-name cell: alternatives separated by ` ; `, each maybe `NAME -> CHILDREN`.
fn parse_files(cell: &str, format: &str, ids: &[String]) -> Result<Vec<FilePattern>, String> {
    let mut out: Vec<FilePattern> = Vec::new();
    let mut lead: Option<String> = None;
    for part in cell.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (main, children) = match part.split_once("->") {
            Some((m, c)) => (strip_note(m), Some(strip_note(c))),
            None => (strip_note(part), None),
        };
        for name in expand_braces(main) {
            let file = parse_file(&name, children, format, ids, lead.as_deref())?;
            lead = Some(format!("Z__C_{}_yyyyMMddhhmmss_", file.author));
            out.push(file);
        }
    }
    Ok(out)
}

/// `Fper{30,10}min` → `Fper30min`, `Fper10min`.
fn expand_braces(s: &str) -> Vec<String> {
    match (s.find('{'), s.find('}')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b]
            .split(',')
            .flat_map(|alt| expand_braces(&format!("{}{alt}{}", &s[..a], &s[b + 1..])))
            .collect(),
        _ => vec![s.to_owned()],
    }
}

fn parse_file(
    name: &str,
    children: Option<&str>,
    format: &str,
    ids: &[String],
    lead: Option<&str>,
) -> Result<FilePattern, String> {
    let mut name = name.replace("YYYYMMDDhhmmss", "yyyyMMddhhmmss");
    if let Some(rest) = name.strip_prefix("..._") {
        let lead = lead.ok_or_else(|| format!("{name:?} abbreviates nothing"))?;
        name = format!("{lead}{rest}");
    }
    // jf06112's `Z__RJTD_` (docs quirk): every other name has the `C` flag.
    let body = name
        .strip_prefix("Z__C_")
        .or_else(|| name.strip_prefix("Z__"))
        .ok_or_else(|| format!("file name {name:?} does not start with Z__"))?;
    let (author, rest) = body
        .split_once('_')
        .ok_or_else(|| format!("file name {name:?} has no author"))?;
    let rest = rest
        .strip_prefix("yyyyMMddhhmmss_")
        .or_else(|| rest.strip_prefix("..._"))
        .ok_or_else(|| format!("file name {name:?} has no time stamp"))?;
    let (core, tail) = rest
        .rsplit_once('_')
        .ok_or_else(|| format!("file name {name:?} has no tail"))?;
    // An abbreviated identifier part (`Proi_Fper10min_FH01-06`): the row's identifier that
    // ends with it.
    let core = if ids.iter().any(|i| i == core) {
        core.to_owned()
    } else {
        ids.iter()
            .find(|i| i.ends_with(&format!("_{core}")))
            .cloned()
            .unwrap_or_else(|| core.to_owned())
    };
    let children = match children {
        Some(spec) => parse_children(spec)?,
        None if tail.starts_with("NNN") || tail.starts_with("0XX") => Children::Bundle {
            max: bundle_max(format),
        },
        None => Children::None,
    };
    Ok(FilePattern {
        text: format!("Z__C_{author}_yyyyMMddhhmmss_{core}_{tail}"),
        author: author.to_owned(),
        core: Pattern::parse(&core),
        tail: tail.to_owned(),
        children,
    })
}

/// `_shape.dbf/.shp/.shx` → suffix `_shape`, extensions `dbf`, `shp`, `shx`.
fn parse_children(spec: &str) -> Result<Children, String> {
    let mut parts = spec.split('/');
    let first = parts.next().unwrap_or_default();
    let (suffix, ext) = first
        .rsplit_once('.')
        .ok_or_else(|| format!("children {spec:?} have no extension"))?;
    let mut exts = vec![ext.to_owned()];
    for p in parts {
        exts.push(
            p.strip_prefix('.')
                .ok_or_else(|| format!("child {p:?} is not an extension"))?
                .to_owned(),
        );
    }
    Ok(Children::Named {
        suffix: suffix.to_owned(),
        exts,
    })
}

/// `… (<=99 children)` → 99; `~13 children` → 13; else 99.
fn bundle_max(format: &str) -> u32 {
    let digits = |s: &str| -> Option<u32> {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    format
        .split("<=")
        .nth(1)
        .and_then(digits)
        .or_else(|| format.split('~').nth(1).and_then(digits))
        .unwrap_or(99)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        Catalog::parse(TSV).expect("the shipped catalog parses")
    }

    #[test]
    fn the_shipped_catalog_parses_with_its_source_commit() {
        let c = cat();
        assert!(
            c.source
                .contains("3018baed2e74cdd0ee9ee5d83d785b295a6d8dc5"),
            "{}",
            c.source
        );
        assert_eq!(c.products.len(), 46, "one product per data row");
        let classes: std::collections::BTreeSet<&str> = c
            .products
            .iter()
            .map(|p| p.classification.as_str())
            .collect();
        // The 23 classifications of the docs (§5).
        assert_eq!(classes.len(), 23, "{classes:?}");
        for p in &c.products {
            assert!(!p.identifiers.is_empty(), "{}", p.page);
            assert!(!p.files.is_empty(), "{}", p.page);
        }
        assert!(std::ptr::eq(get(), get()), "parsed once");
        assert_eq!(get(), &c);
    }

    #[test]
    fn classification_identifier_pairs_are_the_rows() {
        let c = cat();
        let pairs: Vec<(&str, &str)> = c.pairs().map(|(k, i)| (k, i.text())).collect();
        for want in [
            ("jmafile.rdr-nc5min", "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL"),
            ("jmafile.srf-p10", "SRF_GPV_Ggis1km_Prr60lv_Aper10min_ANAL"),
            ("jmafile.fla-ajp", "FLA_GPV_Rjp_ANAL"),
            ("jmafile.obs-amds", "OBS_AMDSCC"),
            ("jmafile.obs-amds", "OBS_AMDSCC_Rjp_N#"),
            ("jmafile.met-cht", "MET_CHT_JCIasas_JCP2048x2398"),
            ("jmafile.met-cht", "MET_CHT_JCIfcxx91"),
            (
                "jmafile.met-gwf",
                "MET_GPV_Gll5km_Jtenkibunpu_FHhh(-hh)_NJ000@@@",
            ),
        ] {
            assert!(pairs.contains(&want), "{want:?} missing");
        }
        // Abbreviations expanded against the previous identifier of the cell.
        for want in [
            "MET_SEQ_Ggis1km_Proi_Aper10min_RJsuikei###_ANAL",
            "MET_SEQ_Ggis1km_Proi_Fper10min_RJsuikei###_FH0010-0100",
            "MET_SEQ_Ggis1km_Proi_Fper10min_FH01-06",
            "MET_GPV_Ggis1km_Pfpi_Fper10min_FH01-06",
        ] {
            assert!(
                pairs.iter().any(|(_, i)| *i == want),
                "{want} not expanded: {:?}",
                pairs
                    .iter()
                    .filter(|(k, _)| k.contains("roi") || k.contains("fpi"))
                    .collect::<Vec<_>>()
            );
        }
        assert!(pairs.iter().all(|(_, i)| !i.contains("...")));
    }

    #[test]
    fn placeholders_match_their_variable_parts_only() {
        let c = cat();
        let exact = |e: &str| {
            c.exact(e)
                .map(|(p, i)| (p.classification.clone(), i.text()))
        };
        assert_eq!(
            exact("OBS_AMDS_Rjp_N1"),
            Some(("jmafile.obs-amds".into(), "OBS_AMDS_Rjp_N#"))
        );
        assert_eq!(
            exact("OBS_AMDS_Rjp_N12").map(|x| x.1),
            Some("OBS_AMDS_Rjp_N#")
        );
        assert_eq!(exact("OBS_AMDS_Rjp_N"), None, "N# needs a number");
        assert_eq!(exact("OBS_AMDS_Rjp_Nx"), None);
        assert_eq!(
            exact("OCN_GPV_Rnwpa_Gll0p1deg_Pss_A2026112400").map(|x| x.1),
            Some("OCN_GPV_Rnwpa_Gll0p1deg_Pss_AyyyyMMddhh")
        );
        assert_eq!(exact("OCN_GPV_Rnwpa_Gll0p1deg_Pss_A20261124"), None);
        assert_eq!(
            exact("MET_SEQ_Ggis1km_Proi_Aper10min_RJsuikei007_ANAL").map(|x| x.1),
            Some("MET_SEQ_Ggis1km_Proi_Aper10min_RJsuikei###_ANAL")
        );
        assert_eq!(
            exact("MET_SEQ_Ggis1km_Proi_Aper10min_RJsuikei07_ANAL"),
            None
        );
        for gwf in [
            "MET_GPV_Gll5km_Jtenkibunpu_FH03_NJ000130",
            "MET_GPV_Gll5km_Jtenkibunpu_FH03-06_NJ000ABC",
        ] {
            assert!(exact(gwf).is_some(), "{gwf}");
        }
        assert_eq!(exact("MET_GPV_Gll5km_Jtenkibunpu_FH3_NJ000130"), None);
        assert!(
            exact("MET_GPV_Rjp_Jwsp50_FD0000-0500_NCRJTD001_NTY2601").is_some(),
            "typhoon ids"
        );
        // `hh` is a placeholder only in `FHhh(-hh)`; `Phhlv` is a word.
        assert!(exact("RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL").is_some());
        assert_eq!(exact("RDR_GPV_Ggis1km_P12lv_Aper5min_ANAL"), None);
        let p = Pattern::parse("OBS_AMDS_Rjp_N#");
        assert!(p.has_placeholders());
        assert!(!Pattern::parse("FLA_GPV_Rjp_ANAL").has_placeholders());
    }

    #[test]
    fn entries_are_full_identifiers_prefixes_or_unknown() {
        let c = cat();
        let k = |e: &str| c.classify(e);
        assert_eq!(
            k("RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL"),
            EntryKind::Exact {
                classification: "jmafile.rdr-nc5min".into()
            }
        );
        // The bundle's identifier is full, though it also starts another identifier.
        assert_eq!(
            k("OBS_AMDSCC"),
            EntryKind::Exact {
                classification: "jmafile.obs-amds".into()
            }
        );
        assert_eq!(
            k("RDR_GPV"),
            EntryKind::Prefix {
                classifications: vec!["jmafile.rdr-nc5min".into()]
            }
        );
        match k("SRF_GPV") {
            EntryKind::Prefix { classifications } => {
                assert!(classifications.contains(&"jmafile.srf-p10".to_string()));
                assert!(classifications.contains(&"jmafile.srf-sw".to_string()));
                assert!(!classifications.contains(&"jmafile.rdr-nc5min".to_string()));
            }
            other => panic!("{other:?}"),
        }
        // A prefix that ends inside a placeholder still prefixes.
        assert!(matches!(k("OBS_AMDS_Rjp_N"), EntryKind::Prefix { .. }));
        assert!(matches!(
            k("OCN_GPV_Rnwpa_Gll0p1deg_Pss_A2026"),
            EntryKind::Prefix { .. }
        ));
        assert_eq!(k("RDR_GPV_TYPO"), EntryKind::Unknown);
        assert_eq!(k("XYZ"), EntryKind::Unknown);
        // The weather charts are a family known by examples.
        assert!(matches!(
            k("MET_CHT_JCIfsas24_JCP2048x2398"),
            EntryKind::Prefix { .. }
        ));
        assert_eq!(c.prefixed_by("OBS_AMDSCC").len(), 2);
    }

    #[test]
    fn file_patterns_follow_the_naming_rule() {
        let c = cat();
        let radar = c
            .file_for("RDR_GPV_Ggis0p25km_Pri60lv_Aper5min_ANAL")
            .unwrap();
        assert_eq!(radar.0.classification, "jmafile.rdr-nc5min");
        assert_eq!(radar.1.compression(), Some("gzip"));
        assert_eq!(radar.1.tail, "grib2.bin.gz");
        let soil = c.file_for("SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06").unwrap();
        assert_eq!(soil.1.compression(), None);
        let shape = c.file_for("MET_INF_Pslmcs_Fper10min_FH0000-0030").unwrap();
        assert_eq!(shape.0.classification, "jmafile.srf-rrp");
        assert!(shape.1.is_concat());
        assert_eq!(
            shape.1.children,
            Children::Named {
                suffix: "_shape".into(),
                exts: vec!["dbf".into(), "shp".into(), "shx".into()]
            }
        );
        let bundle = c.file_for("OBS_AMDSCC").unwrap();
        assert_eq!(bundle.1.author, "COMP");
        assert_eq!(bundle.1.children, Children::Bundle { max: 99 });
        let members = c.bundle_members(&bundle.0.classification, bundle.1);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].core.text(), "OBS_AMDSCC_Rjp_N#");
        let roi = c
            .file_for("MET_SEQ_Ggis1km_Proi_Fper10min_FH01-06")
            .expect("the abbreviated bundle name is resolved");
        assert_eq!(
            roi.1.text,
            "Z__C_COMP_yyyyMMddhhmmss_MET_SEQ_Ggis1km_Proi_Fper10min_FH01-06_NNN.tar.gz"
        );
        assert_eq!(roi.1.children, Children::Bundle { max: 99 });
        let basin = c.file_for("MET_SEQ_Ggis1km_Proi_Aper10min").unwrap();
        assert_eq!(
            basin.1.children,
            Children::Bundle { max: 13 },
            "~13 children"
        );
        // The docs' `Z__RJTD_` (jf06112) is read with its `C`.
        let wsp = c
            .file_for("MET_GPV_Rjp_Jwsp50_FD0000-0500_JRintgrt_NCRJTD001_NTY2601")
            .unwrap();
        assert!(wsp.1.text.starts_with("Z__C_RJTD_"), "{}", wsp.1.text);
        // Brace alternatives and upper-case stamps.
        assert!(
            c.file_for("MET_GPV_Ggis1km_Pfpi_Fper30min_FH01-06")
                .is_some()
        );
        assert!(
            c.file_for("MET_GPV_Ggis1km_Pfpi_Fper10min_FH01-06")
                .is_some()
        );
        assert!(c.file_for("OBS_SURF_Rjp_Opermin").is_some());
        // No real file name ends in .zip.
        assert!(
            c.products
                .iter()
                .flat_map(|p| &p.files)
                .all(|f| !f.tail.ends_with(".zip"))
        );
        let t = time::macros::datetime!(2026-11-24 10:54:01 UTC);
        let fill = Fill {
            time: t,
            seq: 7,
            count: 4,
            code: 0,
        };
        assert_eq!(
            bundle.1.name("OBS_AMDSCC", &fill),
            "Z__C_COMP_20261124105401_OBS_AMDSCC_004.tar.gz"
        );
        assert_eq!(
            radar
                .1
                .name("RDR_GPV_Ggis0p25km_Pri60lv_Aper5min_ANAL", &fill),
            "Z__C_RJTD_20261124105401_RDR_GPV_Ggis0p25km_Pri60lv_Aper5min_ANAL_grib2.bin.gz"
        );
    }

    #[test]
    fn filled_identifiers_match_their_pattern() {
        let c = cat();
        let t = time::macros::datetime!(2026-11-24 10:54:01 UTC);
        for seq in 0..8 {
            let fill = Fill {
                time: t,
                seq,
                count: 13,
                code: seq * 11,
            };
            for (_, id) in c.pairs() {
                let v = id.fill(&fill);
                assert!(id.matches(&v), "{} filled as {v}", id.text());
                assert!(!v.contains('#') && !v.contains('@'), "{v}");
            }
        }
    }

    #[test]
    fn typical_sizes_and_cadences_are_read() {
        let c = cat();
        let by_page = |page: &str| c.products.iter().find(|p| p.page == page).unwrap();
        assert_eq!(by_page("jf03210").typical_bytes(), Some(50_000_000));
        assert_eq!(by_page("jf02140").typical_bytes(), Some(600_000));
        assert_eq!(by_page("jf03130").typical_bytes(), Some(500_000));
        assert_eq!(by_page("jf04100").typical_bytes(), None);
        use std::time::Duration;
        assert_eq!(by_page("jf03011").every(), Some(Duration::from_secs(300)));
        assert_eq!(by_page("jf03320").every(), Some(Duration::from_secs(60)));
        assert_eq!(by_page("jf03120").every(), Some(Duration::from_secs(600)));
        assert_eq!(by_page("jf03190").every(), Some(Duration::from_secs(3600)));
        assert_eq!(
            by_page("jf02140").every(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(by_page("jf04100").every(), None);
    }

    #[test]
    fn malformed_catalogs_are_refused_with_the_line() {
        assert_eq!(
            Catalog::parse("# only comments\n"),
            Err(CatalogError::NoHeader)
        );
        let bad = "classification\tpage\tproduct\tHEADER_VALUES\tformat\tfile name pattern\tsize\tcadence\njmafile.x\tp\n";
        assert!(matches!(
            Catalog::parse(bad),
            Err(CatalogError::Line { line: 2, .. })
        ));
    }
}
