//! The PostgreSQL backend against a real server (`crate::testing::pg`): the contract suite,
//! and what only this backend does (URLs, passwords, a foreign database, the counts check).

use super::*;
use crate::testing::pg::PgServer;
use sqlx::Connection;

/// The backends' contract, against PostgreSQL (a fresh database per case).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_store_contract() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let started = std::time::Instant::now();
    crate::state::contract::run_contract(|| async {
        PgStore::open(&server.target().await)
            .await
            .unwrap()
            .with_node(NodeId("a".into()))
    })
    .await;
    println!("contract suite on PostgreSQL: {:?}", started.elapsed());
}

/// A URL's password never shows: not in how the target is named, not in its Debug.
#[test]
fn the_password_is_never_shown() {
    let t = PgTarget::parse(
        "postgres://poller:s3cret@db.example:6543/jma?sslmode=require",
        None,
    )
    .unwrap();
    assert_eq!(t.server(), "db.example:6543");
    assert!(!t.shown().contains("s3cret"), "{}", t.shown());
    assert!(t.shown().contains("poller:***@db.example"), "{}", t.shown());
    assert!(!format!("{t:?}").contains("s3cret"));
    // The default port, and a password from a file (never part of the shown URL).
    let t = PgTarget::parse("postgresql://poller@db/jma", Some("fromfile")).unwrap();
    assert_eq!(t.server(), "db:5432");
    assert!(!format!("{t:?}").contains("fromfile"));
}

/// Not a PostgreSQL URL: refused, saying what is expected.
#[test]
fn malformed_urls_are_refused_with_what_to_write() {
    for (url, says) in [
        ("postgres://", "no host"),
        ("mysql://u@h/db", "postgres://"),
        ("postgres://u:pw@h/db?sslmode=sometimes", "sslmode"),
    ] {
        let err = PgTarget::parse(url, None).unwrap_err();
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains(":pw@"), "{url}: {err}");
    }
}

/// A server that does not answer: the error names host:port and not the password.
#[tokio::test]
async fn an_unreachable_server_is_named_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/db?sslmode=disable");
    let err = PgStore::open(&PgTarget::parse(&url, None).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// Another program's database is refused, untouched; ours opens again (migrations recorded);
/// the read-only handle reads and cannot write; a password from a file is used.
#[tokio::test]
async fn foreign_databases_are_refused_and_ours_reopen() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let target = server.target().await;
    let store = PgStore::open(&target).await.unwrap();
    store
        .insert(&[crate::state::contract::sample_item("a")], now_ms())
        .await
        .unwrap();
    store.close().await;
    let again = PgStore::open(&target).await.unwrap();
    assert_eq!(again.status().await.unwrap().counts[0].items, 1);
    again.close().await;
    let reader = PgStore::open_read_only(&target).await.unwrap();
    assert_eq!(reader.status().await.unwrap().counts[0].items, 1);
    assert!(
        reader
            .insert(&[crate::state::contract::sample_item("b")], now_ms())
            .await
            .is_err(),
        "a read-only handle writes nothing"
    );
    reader.close().await;

    let foreign = server.target().await;
    let mut conn = sqlx::PgConnection::connect_with(&foreign.options)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE invoices (n INT)")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = PgStore::open(&foreign).await.unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 1, "nothing added to a foreign database");
    let missing = PgStore::open_read_only(&server.target().await)
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::Missing { .. }), "{missing}");
}

/// The counts the triggers keep match the items through every transition; a drift is
/// reported by `integrity_check`.
#[tokio::test]
async fn integrity_check_reports_counts_that_drifted() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = PgStore::open(&server.target().await).await.unwrap();
    store
        .insert(
            &[
                crate::state::contract::sample_item("a"),
                crate::state::contract::sample_item("b"),
            ],
            now_ms(),
        )
        .await
        .unwrap();
    let a = store
        .claim_next(now_ms(), &Claim::Any)
        .await
        .unwrap()
        .unwrap();
    assert!(store.mark_done(&a, 10, now_ms(), &[]).await.unwrap());
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    sqlx::query("UPDATE counts SET items = items + 1 WHERE state = 'done'")
        .execute(store.pool())
        .await
        .unwrap();
    let report = store.integrity_check().await.unwrap();
    assert!(report.contains("jmafile/done"), "{report}");
    store.close().await;
}

/// Digests recorded with an item are read back by `verify`'s pages; freshness and landings
/// follow a landing (the plpgsql triggers).
#[tokio::test]
async fn digests_freshness_and_landings_follow_a_landing() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = PgStore::open(&server.target().await)
        .await
        .unwrap()
        .with_hooks(true);
    store
        .insert(&[crate::state::contract::sample_item("a")], now_ms())
        .await
        .unwrap();
    let a = store
        .claim_next(now_ms(), &Claim::Any)
        .await
        .unwrap()
        .unwrap();
    let digests = vec![
        FileDigest {
            name: "".into(),
            bytes: 3,
            sha256: "ab".into(),
        },
        FileDigest {
            name: "x/y".into(),
            bytes: 4,
            sha256: "cd".into(),
        },
    ];
    let landed = now_ms();
    assert!(store.mark_done(&a, 7, landed, &digests).await.unwrap());
    let page = store.done_items_after(0, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].files, digests);
    assert_eq!(store.item_at(&a.path).await.unwrap(), Some((a.seq, true)));
    assert!(store.still_done(a.seq).await.unwrap());
    let fresh = store.freshness().await.unwrap();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].last_landed_ms, landed);
    let hours = store.landings_per_hour(landed, 2).await.unwrap();
    assert_eq!(hours, vec![0, 1]);
    let hook = store.claim_hook(now_ms()).await.unwrap().unwrap();
    assert_eq!(hook.id, "a");
    assert_eq!(
        store.status().await.unwrap().hooks,
        vec![("running".to_owned(), 1)]
    );
    let repaired = store.requeue_damaged(a.seq, "bad bytes").await.unwrap();
    assert!(matches!(
        repaired,
        crate::state::DamagedRepair::Queued { .. }
    ));
    assert!(store.done_items_after(0, 10).await.unwrap().is_empty());
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}

/// A role that must give its password: connects with the password from a file (passed as
/// the settings pass it), fails without, and the error names the server, never the password.
#[tokio::test]
async fn the_password_from_a_file_is_sent_and_a_wrong_one_is_refused_without_showing_it() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.create_password_role("s3cret-pw").await;
    let store = PgStore::open(&PgTarget::parse(&url, Some("s3cret-pw")).unwrap())
        .await
        .unwrap();
    store.ping().await.unwrap();
    store.close().await;
    let err = PgStore::open(&PgTarget::parse(&url, Some("wrong-pw")).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", server.port())),
        "{err}"
    );
    assert!(
        !err.contains("wrong-pw") && !err.contains("s3cret"),
        "{err}"
    );
}

/// TLS through rustls: `sslmode=verify-full` with `sslrootcert` trusts the test CA and the
/// session is encrypted; without the root, the server's certificate is refused.
#[tokio::test]
async fn tls_with_sslrootcert_verifies_the_server() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test db CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &root)
        .unwrap();
    let Some(server) = PgServer::start_with_tls(&leaf.pem(), &leaf_key.serialize_pem()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, root.pem()).unwrap();
    let plain = server.create_database().await;
    let url = plain.replace(
        "sslmode=disable",
        &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
    );
    let store = PgStore::open(&PgTarget::parse(&url, None).unwrap())
        .await
        .unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(encrypted, "the session is TLS");
    store.close().await;
    // Without the root the certificate is not trusted (the system store does not know it).
    let untrusted = plain.replace("sslmode=disable", "sslmode=verify-full");
    let err = PgStore::open(&PgTarget::parse(&untrusted, None).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

/// Nodes as separate processes would be (each its own pool): racing for a role, exactly one
/// wins each time it is free, with a new token every time; racing for the ledger, exactly the
/// limit is booked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_nodes_racing_get_one_leader_and_never_overbook() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let target = server.target().await;
    let mut nodes = Vec::new();
    for k in 0..4 {
        let store = PgStore::open(&target).await.unwrap();
        nodes.push(store.with_node(NodeId(format!("n{k}"))));
    }
    let lease = 1_000;
    let mut last_fencing = 0;
    for round in 0..10 {
        let now = now_ms() + round * 2 * lease;
        let mut racers = tokio::task::JoinSet::new();
        for node in &nodes {
            let node = node.clone();
            racers.spawn(async move { node.lead("jmafile", now, lease).await.unwrap() });
        }
        let mut won = Vec::new();
        while let Some(r) = racers.join_next().await {
            won.extend(r.unwrap());
        }
        assert_eq!(won.len(), 1, "round {round}: one leader, {won:?}");
        assert!(won[0].fencing > last_fencing, "a new token each time");
        last_fencing = won[0].fencing;
    }
    let now = now_ms();
    let mut bookers = tokio::task::JoinSet::new();
    for node in &nodes {
        let node = node.clone();
        bookers.spawn(async move {
            let mut granted = 0;
            for _ in 0..10 {
                if node
                    .book_request("data", now, 60_000, 7)
                    .await
                    .unwrap()
                    .is_none()
                {
                    granted += 1;
                }
            }
            granted
        });
    }
    let mut granted = 0;
    while let Some(g) = bookers.join_next().await {
        granted += g.unwrap();
    }
    assert_eq!(granted, 7, "exactly the limit across separate nodes");
    for node in nodes {
        node.close().await;
    }
}
