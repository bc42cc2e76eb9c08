//! The engine against planted keys: exact classes, idempotent replays, restarts, the
//! memory bound, notifications and continuous assertions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use faultline_model::span::{AttrValue, Origin, Span, SpanKind, StatusCode};

use crate::rule::{Rule, RuleDef};
use crate::state::Class;
use crate::{Checks, Clock};

const S: u64 = 1_000_000_000;

fn span(trace: u64, id: u64, service: &str, name: &str, key: &str, start_s: u64) -> Span {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id: t,
        span_id: id.to_be_bytes(),
        parent_span_id: None,
        name: name.into(),
        kind: SpanKind::Internal,
        start_ns: start_s * S,
        end_ns: start_s * S + 1000,
        status: StatusCode::Unset,
        status_message: String::new(),
        attributes: if key.is_empty() {
            vec![]
        } else {
            vec![("order.id".into(), AttrValue::Str(key.into()))]
        },
        events: vec![],
        links: vec![],
        origin: Arc::new(Origin {
            service: service.into(),
            resource: vec![],
            scope_name: String::new(),
            scope_version: String::new(),
        }),
    }
}

fn order(n: u64, start_s: u64) -> Span {
    span(
        n,
        n * 10,
        "orders",
        "create order",
        &format!("o{n}"),
        start_s,
    )
}

fn ship(n: u64, copy: u64, start_s: u64) -> Span {
    span(
        n + 1_000_000,
        n * 10 + copy + 1,
        "shipping",
        "ship order",
        &format!("o{n}"),
        start_s,
    )
}

fn rule() -> Rule {
    Rule::new(RuleDef {
        name: "order-shipped".into(),
        first: r#"{ service = "orders" && name = "create order" }"#.into(),
        then: r#"{ service = "shipping" && name = "ship order" }"#.into(),
        key: Some("order.id".into()),
        first_key: None,
        then_key: None,
        within: "10s".into(),
        at_most_one: true,
        require_first: true,
        grace: "2s".into(),
        keep: "1h".into(),
        notify: true,
    })
    .unwrap()
}

fn clock(at: &Arc<AtomicU64>) -> Clock {
    let at = at.clone();
    Arc::new(move || at.load(Ordering::SeqCst))
}

fn store(dir: &tempfile::TempDir) -> faultline_store::Store {
    let opts = faultline_store::StoreOptions::new(&dir.path().join("store"));
    faultline_store::Store::open(opts).unwrap().0
}

/// The checks with the test rule in `dir`, on the clock `now`, within `bound` bytes.
fn open(dir: &tempfile::TempDir, now: &Arc<AtomicU64>, bound: usize) -> Checks {
    Checks::open(dir.path(), vec![rule()], vec![], bound, clock(now)).unwrap()
}

/// 10 on time, 5 late, 4 missing, 3 duplicated, 2 orphans.
fn planted() -> Vec<Span> {
    let mut v = Vec::new();
    for n in 0..10 {
        v.push(order(n, 1000));
        v.push(ship(n, 0, 1005));
    }
    for n in 10..15 {
        v.push(order(n, 1000));
        v.push(ship(n, 0, 1030));
    }
    for n in 15..19 {
        v.push(order(n, 1000));
    }
    for n in 19..22 {
        v.push(order(n, 1000));
        v.push(ship(n, 0, 1001));
        v.push(ship(n, 1, 1002));
    }
    for n in 22..24 {
        v.push(ship(n, 0, 1003));
    }
    v
}

fn counts(c: &Checks) -> Vec<(&'static str, u64)> {
    let r = &c.consistency.rules()[0];
    r.keys
        .iter()
        .map(|(k, v)| (*k, *v))
        .filter(|(_, v)| *v > 0)
        .collect()
}

const EXPECTED: [(&str, u64); 5] = [
    ("duplicate", 3),
    ("missing", 4),
    ("orphan", 2),
    ("repaired", 5),
    ("satisfied", 10),
];

#[test]
fn planted_keys_get_exact_classes_however_often_they_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let store = store(&dir);
    let c = open(&dir, &now, 8 << 20);
    let spans = planted();
    // In chunks, each twice, out of order: replays after crashes look like this.
    for chunk in spans.chunks(7).rev() {
        c.consistency.observe(chunk);
        c.consistency.observe(chunk);
    }
    // Before the sweep nothing is declared missing or orphan.
    let before = counts(&c);
    assert!(
        before
            .iter()
            .all(|(k, _)| !["missing", "orphan"].contains(k)),
        "{before:?}"
    );
    c.tick(&store, 1100 * S, true, None).unwrap();
    assert_eq!(counts(&c), EXPECTED);
    // Durable, then everything replayed again after a "restart".
    faultline_store::SpanObserver::checkpoint(&c).unwrap();
    drop(c);
    let c = open(&dir, &now, 8 << 20);
    assert_eq!(counts(&c), EXPECTED);
    c.consistency.observe(&spans);
    c.tick(&store, 1101 * S, true, None).unwrap();
    assert_eq!(counts(&c), EXPECTED);
    // The listing links each key to its traces.
    let missing = c
        .consistency
        .keys("order-shipped", Some(Class::Missing), 100)
        .unwrap()
        .unwrap();
    assert_eq!(missing.len(), 4);
    assert!(missing.iter().all(|k| {
        k.first
            .as_ref()
            .is_some_and(|f| f.link.starts_with("/trace/"))
            && k.then.is_empty()
    }));
    let repaired = c
        .consistency
        .keys("order-shipped", Some(Class::Repaired), 100)
        .unwrap()
        .unwrap();
    assert!(
        repaired.iter().all(|k| (k.late_ms - 20_000.0).abs() < 1.0),
        "{repaired:?}"
    );
    let violated = c
        .consistency
        .keys("order-shipped", None, 100)
        .unwrap()
        .unwrap();
    assert_eq!(violated.len(), 9);
    assert!(c.consistency.keys("nope", None, 10).unwrap().is_none());
    // A late shipment repairs a missing order, and the sweep then forgets nothing early.
    c.consistency.observe(&[ship(15, 0, 1050)]);
    c.tick(&store, 1102 * S, true, None).unwrap();
    let now_counts = counts(&c);
    assert!(
        now_counts.contains(&("missing", 3)) && now_counts.contains(&("repaired", 6)),
        "{now_counts:?}"
    );
    // After `keep`, settled keys are forgotten (a timer whose key's due moved later
    // reschedules itself, and fires at the next tick).
    for _ in 0..2 {
        c.tick(&store, 1000 * S + 3600 * S + 100 * S, true, None)
            .unwrap();
    }
    assert_eq!(counts(&c), vec![]);
}

#[test]
fn notifications_are_queued_once_per_transition_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let store = store(&dir);
    let c = open(&dir, &now, 8 << 20);
    c.consistency.observe(&planted());
    c.tick(&store, 1100 * S, true, None).unwrap();
    faultline_store::SpanObserver::checkpoint(&c).unwrap();
    drop(c);
    let c = open(&dir, &now, 8 << 20);
    let events = c.consistency.pending_notifications(1000).unwrap();
    // 4 missing + 3 duplicate + 2 orphan firing.
    assert_eq!(
        events.iter().filter(|e| e.state == "firing").count(),
        9,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.kind == "consistency" && e.link.is_some())
    );
    let keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
    c.consistency.notifications_handed_over(&keys).unwrap();
    assert!(c.consistency.pending_notifications(10).unwrap().is_empty());
    // Replaying the same spans queues nothing new.
    c.consistency.observe(&planted());
    c.tick(&store, 1100 * S, true, None).unwrap();
    assert!(c.consistency.pending_notifications(10).unwrap().is_empty());
    // A repair resolves.
    c.consistency.observe(&[ship(16, 0, 1060)]);
    let ev = c.consistency.pending_notifications(10).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].state, "resolved");
    assert!(ev[0].message.contains("late"), "{}", ev[0].message);
}

#[test]
fn a_hundred_thousand_pending_keys_stay_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let bound = 4 << 20;
    let c = open(&dir, &now, bound);
    let mut most = 0;
    for batch in 0..200u64 {
        let spans: Vec<Span> = (0..500).map(|i| order(batch * 500 + i, 1000)).collect();
        c.consistency.observe(&spans);
        most = most.max(c.consistency.memory_bytes());
    }
    assert!(
        most <= bound / 2 + 500 * 200,
        "the write-back map reached {most} bytes"
    );
    assert_eq!(c.consistency.rules()[0].keys["pending"], 100_000);
    // Every key is still found: a shipment for the first one satisfies it.
    c.consistency.observe(&[ship(0, 0, 1001)]);
    assert_eq!(c.consistency.rules()[0].keys["satisfied"], 1);
}

#[test]
fn spans_without_the_key_are_counted_not_keyed() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let c = open(&dir, &now, 8 << 20);
    c.consistency
        .observe(&[span(1, 1, "orders", "create order", "", 1000)]);
    let r = &c.consistency.rules()[0];
    assert_eq!(r.spans_unkeyed, 1);
    assert_eq!(r.keys.values().sum::<u64>(), 0);
}

#[test]
fn rules_made_through_the_api_persist_and_config_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let c = open(&dir, &now, 8 << 20);
    let mut d = rule().def;
    assert!(
        c.consistency
            .put_rule(Rule::new(d.clone()).unwrap())
            .is_err()
    );
    d.name = "api-rule".into();
    assert!(
        !c.consistency
            .put_rule(Rule::new(d.clone()).unwrap())
            .unwrap()
    );
    drop(c);
    let c = open(&dir, &now, 8 << 20);
    let names: Vec<(String, &str)> = c
        .consistency
        .rules()
        .into_iter()
        .map(|r| (r.def.name, r.source))
        .collect();
    assert_eq!(
        names,
        vec![
            ("order-shipped".into(), "config"),
            ("api-rule".into(), "api")
        ]
    );
    assert!(c.consistency.delete_rule("api-rule").unwrap());
    assert!(!c.consistency.delete_rule("api-rule").unwrap());
    assert!(c.consistency.delete_rule("order-shipped").is_err());
}

#[test]
fn the_keys_of_a_deleted_rule_leave_the_disk_as_their_timers_fire() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let store = store(&dir);
    let c = open(&dir, &now, 8 << 20);
    // The same rule under a second name, made through the API.
    let mut d = rule().def;
    d.name = "api-rule".into();
    c.consistency.put_rule(Rule::new(d).unwrap()).unwrap();
    c.consistency.observe(&planted());
    let (live, gone) = ("order-shipped", "api-rule");
    let both = c.consistency.stored_keys(live);
    assert!(both > 0);
    assert_eq!(c.consistency.stored_keys(gone), both);
    assert!(c.consistency.delete_rule(gone).unwrap());
    // The deadlines pass: the live rule keeps its keys (their classes), the deleted rule's
    // whose timers fired are gone.
    c.tick(&store, 1100 * S, true, None).unwrap();
    assert_eq!(c.consistency.stored_keys(live), both);
    let left = c.consistency.stored_keys(gone);
    assert!(left < both, "{left} of {both}");
    // Past every key's keep: none of the deleted rule's keys is left on disk.
    c.tick(&store, (1100 + 3 * 3600) * S, true, None).unwrap();
    assert_eq!(c.consistency.stored_keys(gone), 0);
    assert_eq!(c.consistency.stored_keys(live), 0, "forgotten after keep");
}

#[test]
fn leaving_one_violation_for_another_resolves_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let store = store(&dir);
    let c = open(&dir, &now, 32 << 20);
    // Two shipments and no order: an orphan once the grace passed.
    c.consistency
        .observe(&[ship(30, 0, 1001), ship(30, 1, 1002)]);
    c.tick(&store, 1100 * S, true, None).unwrap();
    // The order comes late: now a duplicate.
    c.consistency.observe(&[order(30, 1000)]);
    let mut keys: Vec<(String, String)> = c
        .consistency
        .pending_notifications(10)
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.state))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            (
                "consistency/order-shipped/o30/duplicate".into(),
                "firing".into()
            ),
            (
                "consistency/order-shipped/o30/orphan".into(),
                "firing".into()
            ),
            (
                "consistency/order-shipped/o30/orphan/resolved".into(),
                "resolved".into()
            ),
        ]
    );
}

#[test]
fn a_firing_handed_over_before_a_crash_is_resolved_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1100 * S));
    let store = store(&dir);
    let c = open(&dir, &now, 32 << 20);
    // A shipment and no order: an orphan once the grace passed, and its firing is sent.
    c.consistency.observe(&[ship(40, 0, 1001)]);
    c.tick(&store, 1100 * S, true, None).unwrap();
    let fired: Vec<String> = c
        .consistency
        .pending_notifications(10)
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        fired,
        vec!["consistency/order-shipped/o40/orphan".to_string()]
    );
    c.consistency.notifications_handed_over(&fired).unwrap();
    // A crash before the next checkpoint (dropping flushes nothing).
    drop(c);
    let c = open(&dir, &now, 32 << 20);
    // The WAL replays the shipment, then the order arrives, re-sent after the restart.
    c.consistency.observe(&[ship(40, 0, 1001)]);
    c.consistency.observe(&[order(40, 1000)]);
    let events: Vec<(String, String)> = c
        .consistency
        .pending_notifications(10)
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.state))
        .collect();
    assert!(
        events.contains(&(
            "consistency/order-shipped/o40/orphan/resolved".into(),
            "resolved".into()
        )),
        "the firing sent before the crash is never resolved: {events:?}"
    );
}

#[test]
fn timers_fire_once_when_sweeps_take_their_lists_in_parts_across_flushes_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1001 * S));
    let c = open(&dir, &now, 64 << 20);
    // 5,000 orders over three seconds: due 12 s after each (10 s within, 2 s grace).
    let spans: Vec<Span> = (0..5000u64).map(|n| order(n, 1000 + n % 3)).collect();
    c.consistency.observe(&spans[..3000]);
    c.consistency.flush(true).unwrap();
    c.consistency.observe(&spans[3000..]); // these timers are still in memory
    let at = 1015 * S;
    assert_eq!(
        c.consistency.sweep(1011 * S, 1000).unwrap(),
        0,
        "none due yet"
    );
    assert_eq!(c.consistency.sweep(at, 1000).unwrap(), 1000);
    assert_eq!(c.consistency.sweep(at, 1000).unwrap(), 1000);
    c.consistency.flush(true).unwrap();
    assert_eq!(c.consistency.sweep(at, 1000).unwrap(), 1000);
    // A crash: what the last sweep did is lost, and its timers come back.
    drop(c);
    let c = open(&dir, &now, 64 << 20);
    assert_eq!(c.consistency.rules()[0].keys["missing"], 2000);
    let mut fired = 0;
    loop {
        let n = c.consistency.sweep(at, 700).unwrap();
        assert!(n <= 700);
        if n == 0 {
            break;
        }
        fired += n;
        if fired % 1400 == 0 {
            c.consistency.flush(false).unwrap();
        }
    }
    assert_eq!(fired, 3000, "every timer not yet fired, once");
    let r = &c.consistency.rules()[0];
    assert_eq!(r.keys["missing"], 5000);
    assert_eq!(r.keys["pending"], 0);
    assert_eq!(r.entered["missing"], 5000, "no key counted twice");
    // The keys are forgotten an hour after their last span, by the timers set when
    // they expired.
    c.consistency.flush(true).unwrap();
    let later = (1003 + 3600) * S;
    let mut forgotten = 0;
    loop {
        let n = c.consistency.sweep(later, 2000).unwrap();
        if n == 0 {
            break;
        }
        forgotten += n;
    }
    assert_eq!(forgotten, 5000);
    assert_eq!(c.consistency.rules()[0].keys["missing"], 0);
}
