//! The contract every state store backend passes: one suite, generic over [`StateStore`], run
//! against SQLite in `sqlite`'s tests (and by any later backend against itself).
//!
//! What it proves: a claim is exactly-once among concurrent claimers of several nodes; listing
//! is idempotent; a cursor and its items land in one commit; the retry, throttle, same-id and
//! fail transitions do what the downloader relies on; an expired lease (and only an expired
//! one) lets another node take an item, and the old holder can tell; counts follow every
//! transition.

use std::collections::HashSet;
use std::future::Future;

use super::StoreError;
use super::{StateCount, StateStore};
use crate::model::plan::{Compression, Layout, Plan};
use crate::model::{Claim, Cursor, HoldReason, LEASE, NewItem, NodeId, Source, now_ms};

/// One hour: far enough ahead that every hold and backoff a test made is over, well inside the
/// store's clock-jump guard (2 h).
const LATER: i64 = 3_600_000;

fn item(source: Source, id: &str, received_ms: i64) -> NewItem {
    NewItem {
        source,
        id: id.into(),
        serial: Some(received_ms as u64),
        classification: format!("{}.x", source.as_str()),
        received_ms: Some(received_ms),
        url: format!("https://data.api.dmdata.jp/v1/{id}"),
        plan: Some(Plan {
            compression: Compression::Gzip,
            layout: Layout::Single { length: 1 },
        }),
        path: Some(format!("{}/x/{id}", source.as_str())),
        refused: None,
        type_name: None,
    }
}

fn items(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| item(Source::Jmafile, &format!("id{i:03}"), 1_000 + i as i64))
        .collect()
}

fn count(counts: &[StateCount], source: &str, state: &str) -> i64 {
    counts
        .iter()
        .filter(|c| c.source == source && c.state == state)
        .map(|c| c.items)
        .sum()
}

/// Runs every case, each on a fresh store from `make` (claiming as node "a").
pub(crate) async fn run_contract<S, F, Fut>(make: F)
where
    S: StateStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    exactly_once_claim(make().await).await;
    idempotent_listing(make().await).await;
    cursor_and_items_in_one_commit(make().await).await;
    transitions(make().await).await;
    lease_expiry_lets_another_node_take_over(make().await).await;
    own_claims_come_back_at_once(make().await).await;
    counts_follow_transitions(make().await).await;
    one_leader_per_role_and_stale_tokens_are_fenced(make().await).await;
    a_live_node_id_is_not_taken_twice(make().await).await;
    the_request_ledger_never_overbooks(make().await).await;
}

async fn exactly_once_claim<S: StateStore>(store: S) {
    let n = 60;
    store.insert(&items(n), now_ms()).await.unwrap();
    let mut claimers = tokio::task::JoinSet::new();
    for k in 0..8 {
        let handle = store.for_node(NodeId(format!("node{}", k % 3)));
        claimers.spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = handle.claim_next(now_ms(), &Claim::Any).await.unwrap() {
                assert_eq!(c.attempts, 1, "{}: claimed once, one attempt", c.id);
                got.push(c.seq);
                tokio::task::yield_now().await;
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(got) = claimers.join_next().await {
        all.extend(got.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), n, "every item claimed");
    assert_eq!(unique.len(), n, "no item claimed twice");
    assert!(
        store
            .claim_next(now_ms() + LATER, &Claim::Any)
            .await
            .unwrap()
            .is_none()
    );
    store.close().await;
}

async fn idempotent_listing<S: StateStore>(store: S) {
    let list = items(5);
    let cursor = Cursor {
        token: Some("t1".into()),
        query: "{}".into(),
        high_serial: Some(1004),
        ..Cursor::default()
    };
    let first = store
        .commit_poll("jmafile", &cursor, &list, now_ms(), None)
        .await
        .unwrap();
    assert_eq!((first.inserted, first.duplicates), (5, 0));
    assert_eq!(first.new, vec![true; 5]);
    let mut again = list.clone();
    again.push(item(Source::Jmafile, "fresh", 2_000));
    let second = store
        .commit_poll("jmafile", &cursor, &again, now_ms(), None)
        .await
        .unwrap();
    assert_eq!((second.inserted, second.duplicates), (1, 5));
    assert_eq!(second.new, [vec![false; 5], vec![true]].concat());
    // The same id from another source is another item.
    let other = store
        .insert(&[item(Source::Archive, "id000", 1)], now_ms())
        .await
        .unwrap();
    assert_eq!(other.inserted, 1);
    let counts = store.status().await.unwrap().counts;
    assert_eq!(count(&counts, "jmafile", "pending"), 6);
    assert_eq!(count(&counts, "archive", "pending"), 1);
    let ids: Vec<String> = vec!["id000".into(), "id004".into(), "nope".into()];
    let known = store.known_ids(Source::Jmafile, &ids).await.unwrap();
    assert_eq!(
        known,
        HashSet::from(["id000".to_owned(), "id004".to_owned()])
    );
    store.close().await;
}

async fn cursor_and_items_in_one_commit<S: StateStore>(store: S) {
    assert_eq!(store.cursor("jmafile").await.unwrap(), None);
    let cursor = Cursor {
        token: Some("next".into()),
        query: r#"{"types":["VXSE53"]}"#.into(),
        high_serial: Some(7),
        last_received_ms: Some(5),
        interval_ms: Some(1_000),
        last_poll_ms: Some(9),
        backlog_token: Some("back".into()),
        backlog_pooling: Some("pool".into()),
        backlog_high: Some(8),
    };
    let listed = items(3);
    store
        .commit_poll("jmafile", &cursor, &listed, now_ms(), None)
        .await
        .unwrap();
    assert_eq!(store.cursor("jmafile").await.unwrap(), Some(cursor.clone()));
    let ids: Vec<String> = listed.iter().map(|i| i.id.clone()).collect();
    assert_eq!(
        store.known_ids(Source::Jmafile, &ids).await.unwrap().len(),
        3
    );
    // A refused token drops the tokens and keeps the watermark.
    store.clear_cursor_token("jmafile").await.unwrap();
    let cleared = store.cursor("jmafile").await.unwrap().unwrap();
    assert_eq!((cleared.token, cleared.backlog_token), (None, None));
    assert_eq!(cleared.high_serial, Some(7));
    // An error is noted beside the cursor and cleared by the next commit.
    store
        .record_poll_error("jmafile", "boom", 10)
        .await
        .unwrap();
    let status = store.status().await.unwrap();
    assert_eq!(status.cursors[0].last_error.as_deref(), Some("boom"));
    assert_eq!(status.cursors[0].types, vec!["VXSE53".to_owned()]);
    store
        .commit_poll("jmafile", &cursor, &[], now_ms(), None)
        .await
        .unwrap();
    assert_eq!(store.status().await.unwrap().cursors[0].last_error, None);
    // Streams come and go by name.
    store
        .commit_poll("jmafile:A", &cursor, &[], now_ms(), None)
        .await
        .unwrap();
    assert!(store.rename_cursor("jmafile:A", "jmafile:B").await.unwrap());
    assert!(
        !store.rename_cursor("jmafile:B", "jmafile").await.unwrap(),
        "target exists"
    );
    let names: Vec<String> = store
        .jmafile_cursors()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["jmafile".to_owned(), "jmafile:B".to_owned()]);
    let retired = store
        .retire_jmafile_cursors(&["jmafile".into()])
        .await
        .unwrap();
    assert_eq!(retired, vec!["jmafile:B".to_owned()]);
    store.close().await;
}

async fn transitions<S: StateStore>(store: S) {
    let t = now_ms();
    store.insert(&items(4), t).await.unwrap();
    let claim = |at| store.claim_next(at, &Claim::Any);

    // Retry: back in the queue, not due before next_ms, the attempt counted.
    let a = claim(t).await.unwrap().unwrap();
    let due = store
        .mark_retry(&a, Some("503"), t + 600_000, true)
        .await
        .unwrap();
    assert!(due >= t + 600_000, "{due}");
    // Throttle: the attempt given back, the throttle counted.
    let b = claim(t).await.unwrap().unwrap();
    assert_ne!(a.seq, b.seq);
    store.mark_throttled(&b, "429", t + 600_000).await.unwrap();
    // Same-id block: held, listed as waiting for that reason.
    let c = claim(t).await.unwrap().unwrap();
    store
        .mark_same_id_blocked(&c, "same data", t + 900_000)
        .await
        .unwrap();
    let waiting = store.waiting(now_ms()).await.unwrap();
    assert!(
        waiting
            .items
            .iter()
            .any(|w| w.id == c.id && w.reason == HoldReason::SameId),
        "{waiting:?}"
    );
    // Fail: for good until retry-failed.
    let d = claim(t).await.unwrap().unwrap();
    store.mark_failed(&d, "bad body", now_ms()).await.unwrap();
    assert!(claim(t + 1).await.unwrap().is_none(), "nothing due now");
    assert!(store.next_due_ms(&Claim::Any).await.unwrap().unwrap() >= t + 600_000);

    let later = t + LATER;
    let mut again = Vec::new();
    while let Some(x) = claim(later).await.unwrap() {
        again.push(x);
    }
    let by_id = |id: &str| again.iter().find(|x| x.id == id).unwrap();
    assert_eq!(
        again.len(),
        3,
        "retried, throttled and blocked items come back"
    );
    assert_eq!((by_id(&a.id).attempts, by_id(&a.id).throttles), (2, 0));
    assert_eq!((by_id(&b.id).attempts, by_id(&b.id).throttles), (1, 1));
    assert_eq!(by_id(&c.id).attempts, 1, "a block gives the attempt back");
    let state = store
        .item_state(Source::Jmafile, &d.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.0.as_str(), state.2.as_deref()),
        ("failed", Some("bad body"))
    );

    assert_eq!(
        store
            .retry_failed(Some(Source::Jmafile), None)
            .await
            .unwrap(),
        (1, 0)
    );
    let d2 = claim(later + LATER / 2).await.unwrap().unwrap();
    assert_eq!(
        (d2.id.as_str(), d2.attempts),
        (d.id.as_str(), 1),
        "fresh attempts"
    );
    store.close().await;
}

async fn lease_expiry_lets_another_node_take_over<S: StateStore>(store: S) {
    let t = now_ms();
    store.insert(&items(1), t).await.unwrap();
    let b = store.for_node(NodeId("b".into()));
    let held = store.claim_next(t, &Claim::Any).await.unwrap().unwrap();
    // While the lease runs nobody else gets the item, and renewing keeps it.
    assert!(
        b.claim_next(t + LATER, &Claim::Any)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.expired_claims(t + LEASE.as_millis() as i64 - 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.renew_claim(&held, t + 10_000).await.unwrap());
    let renewed_end = t + 10_000 + LEASE.as_millis() as i64;
    assert!(b.expired_claims(renewed_end - 1).await.unwrap().is_empty());
    // Once it ran out, the item is anyone's.
    let expired = b.expired_claims(renewed_end + 1).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].seq, held.seq);
    assert!(b.requeue(&expired[0], None).await.unwrap());
    assert!(!b.requeue(&expired[0], None).await.unwrap(), "only once");
    let taken = b.claim_next(t + LATER, &Claim::Any).await.unwrap().unwrap();
    assert_eq!(taken.seq, held.seq);
    assert!(taken.fencing > held.fencing, "every claim bumps the token");
    assert_eq!(taken.attempts, 2, "the lost attempt stays counted");
    // The old holder learns it lost the item, and cannot put it back.
    assert!(!store.renew_claim(&held, t + 20_000).await.unwrap());
    assert!(!store.requeue(&held, None).await.unwrap());
    // Nor end it any other way: the new holder's claim stands.
    assert!(!store.mark_done(&held, 1, now_ms(), &[]).await.unwrap());
    assert!(!store.mark_failed(&held, "late", now_ms()).await.unwrap());
    store
        .mark_retry(&held, Some("late"), 0, true)
        .await
        .unwrap();
    store.mark_throttled(&held, "late", 0).await.unwrap();
    store.mark_same_id_blocked(&held, "late", 0).await.unwrap();
    let state = store
        .item_state(Source::Jmafile, &held.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.0.as_str(), state.1, state.2), ("fetching", 2, None));
    assert!(store.own_claims().await.unwrap().is_empty());
    assert_eq!(b.own_claims().await.unwrap().len(), 1);
    assert!(b.renew_claim(&taken, t + LATER).await.unwrap());
    store.close().await;
}

async fn own_claims_come_back_at_once<S: StateStore>(store: S) {
    let t = now_ms();
    store.insert(&items(3), t).await.unwrap();
    let b = store.for_node(NodeId("b".into()));
    let mine = store.claim_next(t, &Claim::Any).await.unwrap().unwrap();
    let theirs = b.claim_next(t, &Claim::Any).await.unwrap().unwrap();
    // A restart of this node: its own claims, not the other node's, at once.
    let own = store.own_claims().await.unwrap();
    assert_eq!(
        own.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![mine.seq]
    );
    assert!(store.requeue(&own[0], None).await.unwrap());
    assert!(b.renew_claim(&theirs, t + 1).await.unwrap(), "untouched");
    let next = store
        .claim_next(t + LATER, &Claim::Any)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, mine.seq, "the oldest waiting item, taken back");
    store.close().await;
}

async fn counts_follow_transitions<S: StateStore>(store: S) {
    let t = now_ms();
    let mut list = items(3);
    list.push(item(Source::Archive, "arch", 5));
    let mut refused = item(Source::Jmafile, "refused", 6);
    refused.refused = Some("unsafe name".into());
    refused.plan = None;
    refused.path = None;
    list.push(refused);
    let done = store.insert(&list, t).await.unwrap();
    assert_eq!((done.inserted, done.refused), (4, 1));
    let depth = store.queue_depth().await.unwrap();
    assert_eq!(depth, vec![("jmafile", 3), ("archive", 1)]);
    let only_jmafile = store
        .claim_next(t, &Claim::JmafileOnly)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(only_jmafile.source, Source::Jmafile);
    store
        .mark_done(&only_jmafile, 42, now_ms(), &[])
        .await
        .unwrap();
    assert_eq!(store.done_count().await.unwrap(), 1);
    assert_eq!(
        store.queue_depth().await.unwrap(),
        vec![("jmafile", 2), ("archive", 1)]
    );
    let status = store.status().await.unwrap();
    assert_eq!(count(&status.counts, "jmafile", "done"), 1);
    assert_eq!(count(&status.counts, "jmafile", "failed"), 1);
    assert_eq!(count(&status.counts, "jmafile", "pending"), 2);
    assert!(status.last_landed_ms.is_some());
    let paths = store.done_paths().await.unwrap();
    assert_eq!(
        paths,
        vec![(only_jmafile.id.clone(), only_jmafile.path.clone(), 42)]
    );
    // One body request logged per claim.
    assert_eq!(
        store.recent_fetches(t - 1, now_ms()).await.unwrap().len(),
        1
    );
    // Retention: finished items only, and their rows go.
    let old = store.expired(i64::MAX, 10).await.unwrap();
    assert_eq!(old.len(), 2, "done and failed, not waiting: {old:?}");
    let seqs: Vec<i64> = old.iter().map(|(s, _)| *s).collect();
    assert_eq!(store.delete_items(&seqs).await.unwrap(), 2);
    assert_eq!(store.done_count().await.unwrap(), 0);
    // No hooks configured: no hook runs.
    assert!(store.claim_hook(now_ms()).await.unwrap().is_none());
    assert_eq!(store.next_hook_due_ms().await.unwrap(), None);
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.ping().await.unwrap();
    store.close().await;
}

async fn one_leader_per_role_and_stale_tokens_are_fenced<S: StateStore>(store: S) {
    let a = store.for_node(NodeId("a".into()));
    let b = store.for_node(NodeId("b".into()));
    let t = now_ms();
    let lease = 15_000;
    let la = a
        .lead("jmafile", t, lease)
        .await
        .unwrap()
        .expect("free role taken");
    assert!(
        b.lead("jmafile", t + 1, lease).await.unwrap().is_none(),
        "held by a"
    );
    // Another role is independent.
    let lb = b
        .lead("archive", t, lease)
        .await
        .unwrap()
        .expect("other role");
    assert_ne!(lb.role, la.role);
    // A renewal keeps the token.
    let renewed = a.lead("jmafile", t + 5_000, lease).await.unwrap().unwrap();
    assert_eq!(renewed.fencing, la.fencing);
    // a's commits go through while it leads.
    let cursor = Cursor {
        token: Some("t1".into()),
        ..Cursor::default()
    };
    a.commit_poll("jmafile", &cursor, &items(2), t, Some(&renewed))
        .await
        .unwrap();
    // a stalls past its lease; b takes over with a new token.
    let lb2 = b
        .lead("jmafile", t + 5_000 + lease + 1, lease)
        .await
        .unwrap()
        .expect("expired lease taken");
    assert!(lb2.fencing > la.fencing);
    // a wakes up: its commit is refused and writes nothing, not even its items.
    let stale = Cursor {
        token: Some("stale".into()),
        ..Cursor::default()
    };
    let late = vec![item(Source::Jmafile, "late", 9_999)];
    let refused = a
        .commit_poll("jmafile", &stale, &late, t + 30_000, Some(&renewed))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { ref role, fencing }) if role == "jmafile" && fencing == la.fencing),
        "{refused:?}"
    );
    assert_eq!(
        store
            .cursor("jmafile")
            .await
            .unwrap()
            .unwrap()
            .token
            .as_deref(),
        Some("t1")
    );
    assert!(
        store
            .known_ids(Source::Jmafile, &["late".into()])
            .await
            .unwrap()
            .is_empty()
    );
    // The new leader commits; a resigning leader frees the role at once.
    b.commit_poll("jmafile", &stale, &late, t + 30_000, Some(&lb2))
        .await
        .unwrap();
    b.resign(&lb2).await.unwrap();
    let la2 = a.lead("jmafile", t + 30_001, lease).await.unwrap().unwrap();
    assert!(la2.fencing > lb2.fencing);
    // Resigning with a stale token does not free the current holder's lease.
    b.resign(&lb2).await.unwrap();
    assert!(
        b.lead("jmafile", t + 30_002, lease)
            .await
            .unwrap()
            .is_none()
    );
    let leaders = store.leaders().await.unwrap();
    let roles: Vec<(&str, &str)> = leaders
        .iter()
        .map(|l| (l.role.as_str(), l.node.as_str()))
        .collect();
    assert_eq!(roles, vec![("archive", "b"), ("jmafile", "a")]);
    store.close().await;
}

async fn a_live_node_id_is_not_taken_twice<S: StateStore>(store: S) {
    let a = store.for_node(NodeId("a".into()));
    let t = now_ms();
    let lease = 15_000;
    assert_eq!(
        a.register_node("one", t, lease, false).await.unwrap(),
        Ok(())
    );
    let taken = a.register_node("two", t + 1, lease, false).await.unwrap();
    assert_eq!(taken.as_ref().map_err(|n| n.instance.as_str()), Err("one"));
    assert!(a.heartbeat_node("one", t + 5_000, lease).await.unwrap());
    // Once the first instance stops heartbeating past its lease, the id is free again...
    assert_eq!(
        a.register_node("two", t + 5_000 + lease + 1, lease, false)
            .await
            .unwrap(),
        Ok(())
    );
    // ...and the old instance learns it lost it.
    assert!(!a.heartbeat_node("one", t + 25_000, lease).await.unwrap());
    // A clean stop frees it at once; force takes a live one (the SQLite lock case).
    a.deregister_node("two").await.unwrap();
    assert_eq!(
        a.register_node("three", t + 25_001, lease, false)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        a.register_node("four", t + 25_002, lease, true)
            .await
            .unwrap(),
        Ok(())
    );
    let b = store.for_node(NodeId("b".into()));
    b.register_node("bee", t, lease, false)
        .await
        .unwrap()
        .unwrap();
    b.insert(&items(1), t).await.unwrap();
    b.claim_next(now_ms(), &Claim::Any).await.unwrap().unwrap();
    let nodes = store.nodes().await.unwrap();
    let seen: Vec<(&str, &str, i64)> = nodes
        .iter()
        .map(|n| (n.node.as_str(), n.instance.as_str(), n.claims))
        .collect();
    assert_eq!(seen, vec![("a", "four", 0), ("b", "bee", 1)]);
    store.close().await;
}

async fn the_request_ledger_never_overbooks<S: StateStore>(store: S) {
    let t = now_ms();
    let window = 10_000;
    let limit = 5;
    let mut bookers = tokio::task::JoinSet::new();
    for k in 0..6 {
        let handle = store.for_node(NodeId(format!("node{}", k % 3)));
        bookers.spawn(async move {
            let mut granted = 0;
            for _ in 0..4 {
                if handle
                    .book_request("data", t, window, limit)
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
    assert_eq!(granted, limit, "exactly the limit booked across nodes");
    // Full: told when the window frees, which is when the oldest booking leaves it.
    assert_eq!(
        store
            .book_request("data", t + 1, window, limit)
            .await
            .unwrap(),
        Some(t + window)
    );
    // Another budget is separate.
    assert_eq!(
        store
            .book_request("api", t + 1, window, limit)
            .await
            .unwrap(),
        None
    );
    // Once the window moved past them, bookings are free again.
    assert_eq!(
        store
            .book_request("data", t + window + 1, window, limit)
            .await
            .unwrap(),
        None
    );
    store.close().await;
}

/// A jmafile item received now, for backends' own tests.
pub(crate) fn sample_item(id: &str) -> NewItem {
    item(Source::Jmafile, id, now_ms())
}
