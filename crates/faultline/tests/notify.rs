//! The notification outbox against real receivers (tests/clients/notify_receivers.py: a
//! stdlib HTTP server for the JSON and Slack-compatible webhooks, aiosmtpd for e-mail):
//! probes going down and up in bursts while faultline is SIGKILLed ten times, every kill
//! mid-delivery (the receivers answer slowly) and the first attempts refused. Afterwards
//! every transition the probes went through has reached every receiver, in messages whose
//! idempotency keys make each transition count exactly once (a message in flight at a kill
//! is sent again with the same key and body, which the receiver drops); the ten probes
//! failing together are one message per receiver; the delivery state is in the API and
//! the UI. A bad receiver stops `serve` naming the field.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Rng, Server, http_get};

/// Starts the receivers writing to `out`; their HTTP and SMTP ports.
fn receivers(out: &std::path::Path, args: &[&str]) -> (common::Fixture, u16, u16) {
    let mut all = vec!["--out", out.to_str().unwrap()];
    all.extend(args);
    let (f, v) = common::python_fixture("notify_receivers.py", &all);
    let port = |k: &str| v[k].as_u64().unwrap() as u16;
    (f, port("http_port"), port("smtp_port"))
}

/// TCP targets the test opens and closes; an accepting thread serves the open ones.
struct Targets {
    ports: Vec<u16>,
    open: Arc<Mutex<Vec<Option<TcpListener>>>>,
}

impl Targets {
    fn new(n: usize) -> Self {
        let listeners: Vec<Option<TcpListener>> = (0..n)
            .map(|_| {
                let l = common::low_port_listener();
                l.set_nonblocking(true).unwrap();
                Some(l)
            })
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.as_ref().unwrap().local_addr().unwrap().port())
            .collect();
        let open = Arc::new(Mutex::new(listeners));
        let o = Arc::downgrade(&open);
        std::thread::spawn(move || {
            while let Some(open) = o.upgrade() {
                for l in open.lock().unwrap().iter().flatten() {
                    while l.accept().is_ok() {}
                }
                drop(open);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { ports, open }
    }

    /// Opens (binds again) or closes target `i`.
    fn set(&self, i: usize, up: bool) {
        let mut open = self.open.lock().unwrap();
        if up && open[i].is_none() {
            // Something outside the test may still take the port; say so plainly.
            let l = TcpListener::bind(("127.0.0.1", self.ports[i]))
                .unwrap_or_else(|e| panic!("reopening target port {}: {e}", self.ports[i]));
            l.set_nonblocking(true).unwrap();
            open[i] = Some(l);
        } else if !up {
            open[i] = None;
        }
    }
}

/// Seconds a message waits for others to join it: every probe checks each second, so ten
/// targets closed together are all seen failing well within it.
const GROUP_SECS: u64 = 3;

/// How long the receivers wait between recording a request and answering it.
const DELAY_MS: u64 = 500;

fn config(targets: &Targets, http: u16, smtp: u16) -> String {
    let mut c =
        format!("[notify]\ngroup_secs = {GROUP_SECS}\nbase_url = \"http://faultline.test\"\n");
    c.push_str(&format!(
        "[[notify.receivers]]\nname = \"hook\"\nwebhook = {{ url = \"http://127.0.0.1:{http}/hook\", headers = {{ \"x-team\" = \"ops\" }} }}\n\
         [[notify.receivers]]\nname = \"slack\"\nslack = {{ url = \"http://127.0.0.1:{http}/slack/T0/B0/x\" }}\n\
         [[notify.receivers]]\nname = \"mail\"\nsmtp = {{ host = \"127.0.0.1\", port = {smtp}, from = \"faultline@ops.test\", to = [\"oncall@ops.test\"] }}\n"
    ));
    for (i, p) in targets.ports.iter().enumerate() {
        c.push_str(&format!(
            "[[probes]]\nname = \"svc-{i}\"\ninterval_secs = 1\ntimeout_secs = 0.5\n[probes.tcp]\nhost = \"127.0.0.1\"\nport = {p}\n"
        ));
    }
    c
}

/// The receivers' records so far (whole lines only).
fn records(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn unix_secs() -> f64 {
    common::now_ns() as f64 / 1e9
}

fn get(server: &Server, path: &str) -> Value {
    let (status, body) = http_get(server.api, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Every incident transition the probes know of since `since_ms`, as outbox keys.
fn transitions(server: &Server, since_ms: u64) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for p in get(server, "/api/v1/probes")["probes"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let one = get(server, &format!("/api/v1/probes/{name}"));
        for i in one["incidents"].as_array().unwrap() {
            let start = i["start"].as_u64().unwrap();
            if start < since_ms {
                continue;
            }
            keys.insert(format!("probe/{name}/{start}/down"));
            if !i["end"].is_null() {
                keys.insert(format!("probe/{name}/{start}/up"));
            }
        }
    }
    keys
}

/// Waits until every probe's state is the one its target is in (`up[i]` for `svc-{i}`).
fn observed(server: &Server, up: &[bool], cycle: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probes = get(server, "/api/v1/probes");
        let states: BTreeMap<&str, &str> = probes["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["state"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let wrong: Vec<String> = up
            .iter()
            .enumerate()
            .filter(|&(i, &u)| {
                states.get(format!("svc-{i}").as_str()) != Some(&if u { "up" } else { "down" })
            })
            .map(|(i, _)| format!("svc-{i}"))
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cycle {cycle}: probes {wrong:?} not in their targets' state within 20 s: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_transition_reaches_every_receiver_once_through_ten_sigkills() {
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("received.jsonl");
    // Slow answers (kills land mid-request) and the first three refused (retries).
    let delay = DELAY_MS.to_string();
    let (_r, http, smtp) = receivers(&received, &["--delay-ms", &delay, "--fail-first", "3"]);
    let targets = Targets::new(10);
    let cfg = tmp.path().join("faultline.toml");
    std::fs::write(&cfg, config(&targets, http, smtp)).unwrap();
    let data = tmp.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let started_ms = common::now_ns() / 1_000_000;
    let mut server = Server::start(&data, &args);
    let seed = common::now_ns();
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let mut up = [true; 10];
    // First the whole fleet fails together (one grouped message), then random subsets
    // (at least one target each time, so there is always something to deliver).
    let mut kills = 0;
    // Per kill: the requests a receiver had recorded and not yet answered when the sender
    // died, and when it died at the latest.
    let mut in_flight: Vec<(f64, Vec<Value>)> = Vec::new();
    for cycle in 0..10 {
        // The server must have seen the last flips before the next ones: the new message
        // awaited below may be one the previous cycle left (a transition found after its
        // kill), and a flip that undoes changes nobody observed has nothing to deliver.
        observed(&server, &up, cycle);
        let mut flip: Vec<usize> = if cycle == 0 {
            (0..10).collect()
        } else {
            (0..10).filter(|_| rng.range(0, 3) == 0).collect()
        };
        if flip.is_empty() {
            flip.push(rng.range(0, 10) as usize);
        }
        for &i in &flip {
            up[i] = !up[i];
            targets.set(i, up[i]);
        }
        // Every kill mid-delivery: as soon as a receiver has recorded a new message (not
        // a re-send of one cut short by the last kill; so this cycle's transitions were
        // seen and grouped) and before it answers (it waits DELAY_MS), so that message
        // must be sent again after the restart.
        let earlier = records(&received);
        let before = earlier.len();
        let known: BTreeSet<String> = earlier
            .iter()
            .map(|r| r["idempotency_key"].as_str().unwrap().to_string())
            .collect();
        let is_new = |r: &Value| !known.contains(r["idempotency_key"].as_str().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !records(&received)[before..].iter().any(is_new) {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: no new message within 20 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill9();
        let killed_by = unix_secs();
        kills += 1;
        let open: Vec<Value> = records(&received)[before..]
            .iter()
            .filter(|r| r["at"].as_f64().unwrap() + DELAY_MS as f64 / 1000.0 > killed_by)
            .cloned()
            .collect();
        assert!(
            open.iter().any(is_new),
            "cycle {cycle}: the kill (by {killed_by}) came after the new message was answered: {:?}",
            &records(&received)[before..]
        );
        in_flight.push((killed_by, open));
        server = Server::start(&data, &args);
    }
    // Everything back up, then let the last transitions be found and delivered.
    for (i, u) in up.iter_mut().enumerate() {
        *u = true;
        targets.set(i, true);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let (want, outbox) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let want = transitions(&server, started_ms);
        let outbox = get(&server, "/api/v1/notifications?limit=1000");
        let events = outbox["events"].as_array().unwrap();
        let done = events.iter().all(|e| {
            e["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["state"] == "sent")
        });
        let all_up = get(&server, "/api/v1/probes")["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "up");
        if done && all_up && events.len() == want.len() {
            break (want, outbox);
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: want {} transitions; outbox {outbox:#}",
            want.len()
        );
    };
    assert!(want.len() >= 20, "the fleet went down and up: {want:?}");
    // The outbox holds exactly the probes' transitions: none lost, none made up.
    let events = outbox["events"].as_array().unwrap();
    let keys: BTreeSet<String> = events
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, want);
    // Per receiver, the batches the outbox says were sent, and the keys in each.
    let mut batches: BTreeMap<&str, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for e in events {
        for d in e["deliveries"].as_array().unwrap() {
            batches
                .entry(d["receiver"].as_str().unwrap())
                .or_default()
                .entry(d["batch"].as_str().unwrap().to_string())
                .or_default()
                .insert(e["key"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(batches.len(), 3);
    // The fleet's failure: each probe's first incident, all opened by cycle 0's flip, is
    // in one and the same message per receiver, which holds those ten and nothing else.
    let mut fleet_down = BTreeSet::new();
    for i in 0..10 {
        let one = get(&server, &format!("/api/v1/probes/svc-{i}"));
        let start = one["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["start"].as_u64().unwrap())
            .filter(|s| *s >= started_ms)
            .min()
            .unwrap_or_else(|| panic!("svc-{i} never went down: {one}"));
        fleet_down.insert(format!("probe/svc-{i}/{start}/down"));
    }
    let mut fleet_batch: BTreeMap<&str, String> = BTreeMap::new();
    for (who, sent) in &batches {
        let carrying: Vec<(&String, &BTreeSet<String>)> = sent
            .iter()
            .filter(|(_, ks)| !ks.is_disjoint(&fleet_down))
            .collect();
        assert_eq!(
            carrying.len(),
            1,
            "{who}: the fleet's failure in one message: {carrying:?}"
        );
        assert_eq!(
            carrying[0].1, &fleet_down,
            "{who}: the message holds all ten"
        );
        fleet_batch.insert(who, carrying[0].0.clone());
    }
    // What each receiver got, by idempotency key (failed deliveries aside).
    let mut got: BTreeMap<&str, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    let text = std::fs::read_to_string(&received).unwrap();
    let mut refused = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["failed"] == true {
            refused += 1;
            continue;
        }
        let who = match v["receiver"].as_str().unwrap() {
            "webhook" => "hook",
            "slack" => "slack",
            _ => "mail",
        };
        let key = v["idempotency_key"].as_str().unwrap().to_string();
        if who == "mail" {
            assert_eq!(v["message_id"], format!("<{key}@faultline>"));
            assert_eq!(v["rcpt_tos"][0], "oncall@ops.test");
        }
        got.entry(who).or_default().entry(key).or_default().push(v);
    }
    assert_eq!(
        refused, 3,
        "the first three attempts were refused and retried"
    );
    // What the receivers got for the fleet's failure: one message each, naming all ten.
    let hook = &got["hook"][&fleet_batch["hook"]][0]["body"];
    assert!(
        hook["title"].as_str().unwrap().starts_with("10 down: "),
        "{hook}"
    );
    assert_eq!(hook["events"].as_array().unwrap().len(), 10, "{hook}");
    let slack = got["slack"][&fleet_batch["slack"]][0]["body"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let mail = got["mail"][&fleet_batch["mail"]][0]["body"]
        .as_str()
        .unwrap()
        .to_string();
    for (who, text) in [("slack", &slack), ("mail", &mail)] {
        assert_eq!(
            text.matches("[DOWN] probe svc-").count(),
            10,
            "{who}: {text}"
        );
        for i in 0..10 {
            assert!(
                text.contains(&format!("[DOWN] probe svc-{i} ")),
                "{who}: {text}"
            );
        }
    }
    // Every kill landed mid-delivery, and each request it cut short was sent again after
    // the restart, with the same idempotency key.
    for (killed_by, open) in &in_flight {
        for r in open {
            let again = text.lines().any(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["receiver"] == r["receiver"]
                    && v["idempotency_key"] == r["idempotency_key"]
                    && v["at"].as_f64().unwrap() > *killed_by
            });
            assert!(again, "not sent again after the kill at {killed_by}: {r}");
        }
    }
    let cut_short_accepted: usize = in_flight
        .iter()
        .map(|(_, open)| open.iter().filter(|r| r["failed"] != true).count())
        .sum();
    let mut repeats = 0;
    for (who, sent) in &batches {
        let arrived = got.get(who).cloned().unwrap_or_default();
        let arrived_ids: BTreeSet<&String> = arrived.keys().collect();
        let sent_ids: BTreeSet<&String> = sent.keys().collect();
        assert_eq!(arrived_ids, sent_ids, "{who}: every message arrived");
        // A repeat is the same message (same key, same body) re-sent after a kill.
        for (id, copies) in &arrived {
            repeats += copies.len() - 1;
            assert!(
                copies.iter().all(|c| c["body"] == copies[0]["body"]),
                "{who} {id}: repeats are identical"
            );
        }
    }
    // Each transition is in exactly one message per receiver, and the webhook's body
    // names the transitions it carries.
    for (who, sent) in &batches {
        let mut seen = BTreeSet::new();
        for ks in sent.values() {
            for k in ks {
                assert!(seen.insert(k.clone()), "{who}: {k} in two messages");
            }
        }
        assert_eq!(seen, want, "{who}");
    }
    for (id, copies) in &got["hook"] {
        let body = &copies[0]["body"];
        assert_eq!(body["id"], *id);
        let in_body: BTreeSet<String> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(in_body, batches["hook"][id]);
        assert_eq!(copies[0]["headers"]["x-team"], "ops");
        for e in body["events"].as_array().unwrap() {
            assert!(
                e["link"]
                    .as_str()
                    .unwrap()
                    .starts_with("http://faultline.test/trace/")
            );
        }
    }
    // A kill can only repeat a message in flight, at most one per receiver; each request
    // a kill cut short that the receiver would have accepted arrived again, a repeat.
    assert!(
        (cut_short_accepted.max(1)..=3 * kills).contains(&repeats),
        "{repeats} repeats in {kills} kills, {cut_short_accepted} accepted requests cut short"
    );
    eprintln!(
        "{} transitions, {} messages per receiver, {repeats} repeated deliveries (same idempotency key) in {kills} kills",
        want.len(),
        batches["hook"].len()
    );
    // The UI shows the delivery state.
    let (status, page) = http_get(server.api, "/alerts").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<section id=notifications>"));
    assert!(page.contains("<span class=\"delivery sent\""));
    let metrics = server.metrics();
    assert!(
        metrics.contains("faultline_notifications_waiting{receiver=\"mail\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_bad_receiver_stops_serve_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("faultline.toml");
    std::fs::write(
        &cfg,
        "[[notify.receivers]]\nname = \"mail\"\nsmtp = { host = \"127.0.0.1\", from = \"not an address\", to = [\"a@b.test\"] }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notify: receivers[0].smtp.from: \"not an address\" is not an e-mail address"),
        "{err}"
    );
}
