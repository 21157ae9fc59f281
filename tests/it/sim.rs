//! The simulator itself must be faithful to `dmdata-api.md` §12, or the other tests prove
//! nothing. These talk to it with a plain HTTP client, not with our own client code.

use base64::Engine;
use jma_poller::sim::{ItemSpec, Kind, Sim, SimConfig};

async fn start() -> Sim {
    crate::common::init_logs();
    Sim::start(SimConfig {
        data_limit: None,
        api_limit: None,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn auth_forms_and_error_bodies() {
    let sim = start().await;
    let c = http();
    let list = format!("{}/v2/jmafile", sim.base_url());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", sim.key()));
    for req in [
        c.get(&list)
            .header("Authorization", format!("Basic {basic}")),
        c.get(&list).bearer_auth(sim.key()),
        c.get(format!("{list}?key={}", sim.key())),
    ] {
        assert_eq!(req.send().await.unwrap().status(), 200);
    }
    let r = c
        .get(&list)
        .basic_auth("wrong", Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["code"], 401);
    let item = sim.add(ItemSpec::default());
    let r = c
        .get(format!("{}/v1/{}", sim.base_url(), item.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "plain text on data hosts"
    );
}

#[tokio::test]
async fn list_paging_filters_tokens_and_limits() {
    let sim = start().await;
    let c = http();
    for i in 0..25 {
        let type_name = if i % 5 == 0 {
            "SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06"
        } else {
            "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL"
        };
        sim.add(ItemSpec {
            type_name: Some(type_name.into()),
            ..ItemSpec::default()
        });
    }
    let get = |q: String| {
        let c = c.clone();
        let url = format!("{}/v2/jmafile?{q}", sim.base_url());
        let key = sim.key();
        async move { c.get(url).basic_auth(key, Some("")).send().await.unwrap() }
    };
    let v: serde_json::Value = get(String::new()).await.json().await.unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 20, "default limit 20");
    assert_eq!(items[0]["serial"], "25", "newest first, serial as a string");
    assert!(v["nextToken"].is_string() && v["nextPooling"].is_string());
    assert_eq!(v["nextPoolingInterval"], 1600);
    let next: serde_json::Value = get(format!("cursorToken={}", v["nextToken"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["items"].as_array().unwrap().len(), 5);
    assert!(
        next.get("nextToken").is_none(),
        "nextToken only while more remain"
    );
    let pooled: serde_json::Value = get(format!(
        "cursorToken={}",
        v["nextPooling"].as_str().unwrap()
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        pooled["items"].as_array().unwrap().len(),
        0,
        "PuLL returns only newer items"
    );

    let prefix: serde_json::Value = get("type=SRF_GPV&limit=100".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        prefix["items"].as_array().unwrap().len(),
        5,
        "one type = prefix match"
    );
    let exact: serde_json::Value = get("type=SRF_GPV,RDR_GPV&limit=100".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        exact["items"].as_array().unwrap().len(),
        0,
        "several types = exact match"
    );

    let bad = get("cursorToken=garbage".into()).await;
    assert_eq!(bad.status(), 400);
    let v: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "Unexpected data  of search query `cursorToken`."
    );
    assert_eq!(get("limit=101".into()).await.status(), 400);
    sim.expire_tokens();
    let stale = get(format!(
        "cursorToken={}",
        pooled["nextPooling"].as_str().unwrap()
    ))
    .await;
    assert_eq!(
        stale.status(),
        400,
        "expired tokens are refused like invalid ones"
    );
}

#[tokio::test]
async fn bodies_carry_dmdata_headers_and_no_content_encoding() {
    let sim = start().await;
    let c = http();
    let item = sim.add(ItemSpec {
        kind: Kind::Concat { children: 3 },
        ..ItemSpec::default()
    });
    let url = format!("{}/v1/{}", sim.base_url(), item.id);
    let r = c
        .get(&url)
        .basic_auth(sim.key(), Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["dmdata-compression"], "gzip");
    assert_eq!(h["dmdata-format"], "concat");
    assert_eq!(h["dmdata-classification"], item.classification.as_str());
    assert_eq!(h["dmdata-filename"], item.filename());
    assert!(h.get("content-encoding").is_none());
    assert_eq!(
        r.bytes().await.unwrap(),
        item.body,
        "the body is served as stored (still gzip)"
    );

    let r = c
        .get(format!("{url}?headers=true"))
        .basic_auth(sim.key(), Some(""))
        .send()
        .await
        .unwrap();
    let n: usize = r.headers()["dmdata-headers-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body[n - 1], b'\n');
    let headers: serde_json::Value = serde_json::from_slice(&body[..n - 1]).unwrap();
    assert_eq!(headers.as_array().unwrap().len(), 4, "parent + 3 children");
    assert_eq!(&body[n..], &item.body[..]);

    let missing = c
        .get(format!("{}/v1/nope", sim.base_url()))
        .basic_auth(sim.key(), Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let old = sim.add(ItemSpec {
        received: Some(time::OffsetDateTime::now_utc() - time::Duration::days(40)),
        ..ItemSpec::default()
    });
    let r = c
        .get(format!("{}/v1/{}", sim.base_url(), old.id))
        .basic_auth(sim.key(), Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "older than the 1-month window");
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let sim = Sim::start(SimConfig {
        data_limit: Some((3, std::time::Duration::from_secs(60))),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = http();
    let item = sim.add(ItemSpec::default());
    let url = format!("{}/v1/{}", sim.base_url(), item.id);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            c.get(&url)
                .basic_auth(sim.key(), Some(""))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, vec![200, 200, 200, 429, 429]);
    assert_eq!(sim.rate_limited(), 2);
}

#[tokio::test]
async fn type_filter_follows_the_upstream_rules_and_the_refusal_knobs() {
    let sim = start().await;
    let c = http();
    let radar = "RDR_GPV_Ggis1km_Phhlv_Aper5min_ANAL";
    let soil = "SRF_GPV_Ggis1km_Psw_Fper10min_FH01-06";
    for t in [radar, soil, "FLA_GPV_Rjp_ANAL"] {
        sim.add(ItemSpec {
            kind: if t == radar { Kind::Gzip } else { Kind::Plain },
            type_name: Some(t.into()),
            ..ItemSpec::default()
        });
    }
    let get = |q: String| {
        let c = c.clone();
        let url = format!("{}/v2/jmafile?{q}", sim.base_url());
        let key = sim.key();
        async move { c.get(url).basic_auth(key, Some("")).send().await.unwrap() }
    };
    let count = |v: serde_json::Value| v["items"].as_array().unwrap().len();
    // 2–5 values: each an exact identifier; a prefix among them matches nothing.
    let v = get(format!("type={radar},{soil}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count(v), 2);
    let v = get(format!("type={radar},SRF_GPV"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count(v), 1);
    let six = ["A", "B", "C", "D", "E", radar].join(",");
    assert_eq!(
        get(format!("type={six}")).await.status(),
        400,
        "more than 5"
    );

    // A refused `type`, with or without a cursor.
    sim.config().refused_types = vec!["SRF_GPV".into()];
    let r = get("type=SRF_GPV".into()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(get("type=RDR_GPV".into()).await.status(), 200);
    // A refused cursor with a message nobody documented.
    sim.config().cursor_refusal = Some("Bad request.".into());
    let v: serde_json::Value = get("type=RDR_GPV".into()).await.json().await.unwrap();
    sim.expire_tokens();
    let r = get(format!(
        "type=RDR_GPV&cursorToken={}",
        v["nextPooling"].as_str().unwrap()
    ))
    .await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Bad request.");
}

#[tokio::test]
async fn entries_can_leave_out_received_time_and_format() {
    let sim = start().await;
    let item = sim.add(ItemSpec {
        omit_fields: vec!["receivedTime".into(), "format".into()],
        ..ItemSpec::default()
    });
    let v: serde_json::Value = http()
        .get(format!("{}/v2/jmafile", sim.base_url()))
        .basic_auth(sim.key(), Some(""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &v["items"][0];
    assert_eq!(entry["id"], item.id.as_str());
    assert!(entry.get("receivedTime").is_none() && entry.get("format").is_none());
    assert!(v["responseTime"].is_string());
    assert_eq!(entry["headers"][0]["format"], "grib2");
}

/// The per-id block seen on the live data hosts (§15): a quick re-fetch gets 429 with the
/// plain-text `Don't try to get the same data.` for the block's length, for that id only, and
/// the blocked requests use nothing of the host's budget. The log has what the daemon's tests
/// read: id, time and status of every request.
#[tokio::test]
async fn a_quick_refetch_blocks_that_id_alone_and_spends_no_budget() {
    crate::common::init_logs();
    let block = std::time::Duration::from_millis(1500);
    let sim = Sim::start(SimConfig {
        data_limit: Some((4, std::time::Duration::from_secs(600))),
        api_limit: None,
        repeat_fetch_window: Some(std::time::Duration::from_secs(60)),
        repeat_fetch_block: block,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = http();
    let [x, y, z, w] = [(); 4].map(|_| sim.add(ItemSpec::default()));
    let get = |id: String| {
        let c = c.clone();
        let url = format!("{}/v1/{id}", sim.base_url());
        let key = sim.key();
        async move {
            let r = c.get(url).basic_auth(key, Some("")).send().await.unwrap();
            let status = r.status().as_u16();
            let plain = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap().starts_with("text/plain"));
            let body = r.text().await.unwrap();
            (status, plain, body)
        }
    };
    let same = (429, true, "Don't try to get the same data.".to_owned());
    assert_eq!(get(x.id.clone()).await.0, 200);
    assert_eq!(get(x.id.clone()).await, same, "a quick re-fetch is blocked");
    assert_eq!(get(y.id.clone()).await.0, 200, "other ids are not");
    assert_eq!(get(x.id.clone()).await, same, "the block holds");
    assert_eq!(get(z.id.clone()).await.0, 200);
    tokio::time::sleep(block + std::time::Duration::from_millis(100)).await;
    assert_eq!(get(x.id.clone()).await.0, 200, "the block is over");
    // Four bodies served: the budget of 4 is spent now, the blocked requests took none of it.
    let (status, _, body) = get(w.id.clone()).await;
    assert_eq!((status, body.as_str()), (429, "Too Many Requests"));
    assert_eq!(sim.rate_limited(), 1);
    let log: Vec<(String, u16)> = sim
        .requests()
        .into_iter()
        .filter_map(|r| Some((r.id?, r.status)))
        .collect();
    let expected: Vec<(String, u16)> = [
        (&x, 200),
        (&x, 429),
        (&y, 200),
        (&x, 429),
        (&z, 200),
        (&x, 200),
        (&w, 429),
    ]
    .into_iter()
    .map(|(i, s)| (i.id.clone(), s))
    .collect();
    assert_eq!(log, expected);
}
