//! Response shapes of the dmdata.jp API, deserialized tolerantly: numbers may arrive as strings,
//! unknown fields are ignored, both flag spellings (`oflag`/`originator`) are accepted, and a
//! malformed item is reported on its own instead of failing the whole page.

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

/// Accepts `12`, `"12"` and `" 12 "` as 12; rejects negatives, fractions and other text.
pub fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(u64),
        S(String),
        F(f64),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a non-negative integer"))),
        Num::F(f) => Err(serde::de::Error::custom(format!(
            "{f} is not a non-negative integer"
        ))),
    }
}

fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "lenient_u64")] u64);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// ISO 8601 with an offset (`Z` or `+09:00`); a bare local time is taken as UTC.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let bare = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    time::PrimitiveDateTime::parse(s, &bare)
        .map(|t| t.assume_utc())
        .map_err(|_| format!("{s:?} is not an ISO 8601 time"))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let s = String::deserialize(d)?;
    parse_time(&s).map_err(serde::de::Error::custom)
}

/// The part every list response shares. `items` stays raw so each one is parsed on its own.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPage {
    #[serde(default)]
    pub status: Option<String>,
    /// When the server answered; stands in for an item's missing `receivedTime`.
    #[serde(default)]
    pub response_time: Option<String>,
    pub items: Vec<serde_json::Value>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub next_pooling: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub next_pooling_interval: Option<u64>,
}

/// `{"status":"error","error":{"message":..,"code":..}}`
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub message: String,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub code: Option<u64>,
}

/// One entry of `GET /v2/jmafile` `items[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JmaFileItem {
    pub id: String,
    #[serde(deserialize_with = "lenient_u64")]
    pub serial: u64,
    pub classification: String,
    pub headers: Vec<FileHeader>,
    #[serde(deserialize_with = "de_time")]
    pub received_time: OffsetDateTime,
    pub format: String,
    #[serde(default)]
    pub compression: Option<String>,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileHeader {
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub flags: Option<Flags>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(deserialize_with = "lenient_u64")]
    pub length: u64,
    pub filename: String,
    /// HEADER_VALUES split on `_`: the data identifier the `type` filter matches. Kept as
    /// raw JSON so an odd value costs only the identifier, never the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
}

impl JmaFileItem {
    /// The data identifier (HEADER_VALUES): `headers[0].values` joined by `_`, or, when they
    /// are missing, read from the file name (`Z__C_{author}_{yyyyMMddHHmmss}_{id}_{tail}`).
    pub fn identifier(&self) -> Option<String> {
        let first = self.headers.first()?;
        if let Some(serde_json::Value::Array(values)) = &first.values {
            let parts: Option<Vec<&str>> = values.iter().map(|v| v.as_str()).collect();
            if let Some(parts) = parts.filter(|p| !p.is_empty()) {
                return Some(parts.join("_"));
            }
        }
        identifier_from_name(&first.filename)
    }
}

/// The identifier part of a JMA file name: `Z__C_RJTD_20240525083000_SRF_GPV_…_FH01-06_grib2.bin`
/// → `SRF_GPV_…_FH01-06`; bundles `Z__C_COMP_{ts}_{id}_{count}.tar.gz` likewise.
pub fn identifier_from_name(name: &str) -> Option<String> {
    let body = name
        .strip_prefix("Z__C_")
        .or_else(|| name.strip_prefix("Z__"))?;
    let (_author, rest) = body.split_once('_')?;
    let (stamp, rest) = rest.split_once('_')?;
    if stamp.len() != 14 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (id, _tail) = rest.rsplit_once('_')?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// The docs spell these `oflag`/`productidentifier`, the official TS types
/// `originator`/`productIdentifier`; both are accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flags {
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default, alias = "productIdentifier")]
    pub productidentifier: Option<String>,
    #[serde(default, alias = "originator")]
    pub oflag: Option<String>,
}

/// One entry of `GET /v2/archive` `items[]`: one `.tar.gz` per JST day and classification.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveItem {
    pub id: String,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub serial: Option<u64>,
    pub classification: String,
    /// The JST date the archive covers, `YYYY-MM-DD`.
    #[serde(deserialize_with = "de_date")]
    pub date: time::Date,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub data_count: Option<u64>,
    /// Size of the compressed archive, checked against the downloaded byte count.
    #[serde(deserialize_with = "lenient_u64")]
    pub file_size: u64,
    pub url: String,
}

/// One entry of `GET /v2/socket`: a WebSocket session of the account (they count against the
/// contract, so operators want to see them).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketItem {
    #[serde(deserialize_with = "lenient_u64")]
    pub id: u64,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default)]
    pub classifications: Vec<String>,
    #[serde(default)]
    pub test: Option<String>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub formats: Vec<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub ping: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub server: Option<String>,
    pub status: String,
}

pub fn parse_date(s: &str) -> Result<time::Date, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s.trim(), &fmt).map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))
}

fn de_date<'de, D: Deserializer<'de>>(d: D) -> Result<time::Date, D::Error> {
    let s = String::deserialize(d)?;
    parse_date(&s).map_err(serde::de::Error::custom)
}

/// Best-effort identity of an item that failed to parse, so it can still be recorded as failed.
pub fn raw_identity(raw: &serde_json::Value) -> (Option<String>, Option<u64>) {
    let id = raw.get("id").and_then(|v| v.as_str()).map(str::to_owned);
    let serial = raw.get("serial").and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    (id, serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{
      "responseId": "66d23c0cede77d82", "responseTime": "2024-05-25T08:40:00.000Z", "status": "ok",
      "items": [{
        "serial": "10",
        "id": "abcABC0123-_abcABC0123-_abcABC0123-_",
        "classification": "jmafile.rdr-nc5min",
        "headers": [{
          "time": "2024-05-25T08:35:00Z",
          "flags": {"product": "Z", "oflag": "C"},
          "author": "RJTD", "format": "grib2", "length": 1234,
          "values": ["RDR","GPV","Ggis1km","Phhlv","Aper5min","ANAL"],
          "filename": "Z__C_RJTD_20240525083500_RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL_grib2.bin.gz"
        }],
        "receivedTime": "2024-05-25T08:35:31.123Z",
        "format": "grib2", "compression": "gzip",
        "url": "https://jmafiledata.api.dmdata.jp/v1/abcABC0123-_abcABC0123-_abcABC0123-_",
        "somethingNew": {"x": 1}
      }],
      "nextPooling": "cG9sbGluZyAgICAgNzM0MzE", "nextPoolingInterval": "1600"
    }"#;

    #[test]
    fn parses_the_documented_example_with_numbers_as_strings() {
        let page: ListPage = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(page.next_pooling_interval, Some(1600));
        assert_eq!(page.next_token, None);
        let item: JmaFileItem = serde_json::from_value(page.items[0].clone()).unwrap();
        assert_eq!(item.serial, 10);
        assert_eq!(item.headers[0].length, 1234);
        assert_eq!(item.compression.as_deref(), Some("gzip"));
        assert_eq!(item.received_time.millisecond(), 123);
        assert_eq!(
            item.headers[0].flags.as_ref().unwrap().oflag.as_deref(),
            Some("C")
        );
    }

    #[test]
    fn accepts_the_ts_types_spelling_and_jst_offsets() {
        let raw = serde_json::json!({
            "serial": 5, "id": "x", "classification": "jmafile.srf-rrp",
            "headers": [{"flags": {"product":"Z","originator":"J","productIdentifier":"A"},
                         "length": "7", "filename": "a.bin"}],
            "receivedTime": "2024-05-25T17:35:31+09:00", "format": "grib2",
            "compression": null, "url": "https://x/v1/x"
        });
        let item: JmaFileItem = serde_json::from_value(raw).unwrap();
        let flags = item.headers[0].flags.clone().unwrap();
        assert_eq!(flags.oflag.as_deref(), Some("J"));
        assert_eq!(flags.productidentifier.as_deref(), Some("A"));
        assert_eq!(item.received_time.to_offset(time::UtcOffset::UTC).hour(), 8);
        assert_eq!(item.compression, None);
    }

    #[test]
    fn bad_items_fail_alone_with_a_reason() {
        let bad = [
            serde_json::json!({"id": "a", "serial": "ten"}),
            serde_json::json!({"id": "a", "serial": -1}),
            serde_json::json!({"id": "a", "serial": 1.5}),
            serde_json::json!({"serial": 1}),
        ];
        for raw in bad {
            let err = serde_json::from_value::<JmaFileItem>(raw.clone()).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            raw_identity(&serde_json::json!({"id": "q", "serial": "12"})),
            (Some("q".into()), Some(12))
        );
    }

    #[test]
    fn archive_items_accept_numbers_as_strings() {
        let raw = serde_json::json!({
            "serial": "0", "id": "123456789abcdef", "classification": "telegram.weather",
            "date": "2023-04-01", "dataCount": "596", "fileSize": 1525510,
            "url": "https://data.api.dmdata.jp/v1/archive/123456789abcdef"
        });
        let a: ArchiveItem = serde_json::from_value(raw).unwrap();
        assert_eq!(
            (a.serial, a.data_count, a.file_size),
            (Some(0), Some(596), 1525510)
        );
        assert_eq!(a.date, time::macros::date!(2023 - 04 - 01));
        let bad = serde_json::json!({"id": "x", "classification": "c", "date": "April 1st", "fileSize": 1, "url": "u"});
        assert!(serde_json::from_value::<ArchiveItem>(bad).is_err());
    }

    #[test]
    fn the_identifier_comes_from_values_or_else_the_file_name() {
        let page: ListPage = serde_json::from_str(DOC_EXAMPLE).unwrap();
        let mut item: JmaFileItem = serde_json::from_value(page.items[0].clone()).unwrap();
        assert_eq!(
            item.identifier().as_deref(),
            Some("RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL")
        );
        item.headers[0].values = None;
        assert_eq!(
            item.identifier().as_deref(),
            Some("RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL"),
            "from the name"
        );
        item.headers[0].values = Some(serde_json::json!(["RDR", 5]));
        assert_eq!(
            item.identifier().as_deref(),
            Some("RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL"),
            "odd values: from the name"
        );
        assert_eq!(
            identifier_from_name("Z__C_COMP_20261124105401_OBS_AMDSCC_004.tar.gz").as_deref(),
            Some("OBS_AMDSCC")
        );
        assert_eq!(identifier_from_name("Z__C_RJTD_2026_X_grib2.bin"), None);
        assert_eq!(identifier_from_name("a.bin"), None);
    }

    #[test]
    fn bare_times_are_utc() {
        let t = parse_time("2024-05-25T08:35:00").unwrap();
        assert_eq!(t.offset(), time::UtcOffset::UTC);
        assert!(parse_time("yesterday").is_err());
    }
}
