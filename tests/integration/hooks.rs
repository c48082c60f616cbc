//! Hooks end to end: webhooks to `tests/env/hook-receiver` (which checks every signature with
//! the reference `standardwebhooks` package) and command hooks, on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::events::mail;
use crate::harness::{
    Dovecot, Workdir, free_port, quoted, script, simple_mail, unique_dir, wait_until,
};

/// The signing secret of these tests (the Standard Webhooks example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LONG: Duration = Duration::from_secs(60);

/// A running `hook-receiver`; dropping it kills it.
struct Receiver {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Receiver {
    fn start() -> Receiver {
        let mut r = Receiver {
            dir: unique_dir("mtr"),
            port: free_port(),
            child: None,
        };
        r.up();
        r
    }

    /// Starts it (again) on its port.
    fn up(&mut self) {
        let ready = self.dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new("python3")
            .arg(script("hook-receiver"))
            .args([
                "--port",
                &self.port.to_string(),
                "--secret",
                SECRET,
                "--dir",
            ])
            .arg(&self.dir)
            .env("PYTHONPATH", "/opt/testenv/pylib")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("receiver.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "the hook receiver", || {
            ready.exists()
        });
    }

    /// Stops it: connections to its port are refused.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Switches the fault mode (`ok`, `500`, `410`, `429`, `503`, `hang`, `drop`).
    fn fault(&self, mode: &str, count: Option<u32>, retry_after: u32) {
        let body = serde_json::json!({"mode": mode, "count": count, "retry_after": retry_after})
            .to_string();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST /_fault HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// Every request it got, in order.
    fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("requests.jsonl")).unwrap_or_default();
        // The receiver may be writing a line as this reads: only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The requests it answered 200 (all verified).
    fn delivered(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["answer"] == 200)
            .collect()
    }

    fn toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[[hook]]\nname = {}\nurl = {}\nsecret = {}\ntimeout = 3\n{extra}\n",
            quoted(name),
            quoted(&self.url()),
            quoted(SECRET)
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(wd: &Workdir, hooks: &str) {
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{hooks}",
        quoted(&wd.db().to_string_lossy())
    ));
}

fn ingest(wd: &Workdir, raw: &[u8]) {
    crate::harness::run(wd.cmd(&["ingest"]), Some(raw)).success();
}

/// The event log: (cursor, id, type, ticket).
fn event_log(wd: &Workdir) -> Vec<(i64, String, String, i64)> {
    wd.mailticket(&["events", "--json"])
        .success()
        .stdout
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            let ticket = e["data"]["ticket"]["id"].as_i64().unwrap_or(0);
            (
                e["cursor"].as_i64().unwrap(),
                e["id"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                ticket,
            )
        })
        .collect()
}

/// Three tickets with two follow-ups each, one closed: 10 events.
fn some_traffic(wd: &Workdir, tag: &str) {
    for t in 0..3 {
        let first = format!("{tag}-{t}-0@example.org");
        ingest(wd, &mail(&first, None, "help"));
        for f in 1..3 {
            ingest(
                wd,
                &mail(&format!("{tag}-{t}-{f}@example.org"), Some(&first), "more"),
            );
        }
    }
    wd.mailticket(&["close", "2"]).success();
}

/// Asserts that every event of the log reached the receiver, verified, and (for each ticket)
/// first in the order of the log; returns how many requests carried a webhook-id twice.
fn assert_all_arrived_in_order(wd: &Workdir, r: &Receiver) -> usize {
    let log = event_log(wd);
    let got = r.delivered();
    assert!(
        r.requests().iter().all(|q| q["verified"] == true),
        "{:?}",
        r.requests()
    );
    let ids: Vec<&str> = got.iter().map(|q| q["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    let want: BTreeSet<&str> = log.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(unique, want, "every event, by its id");
    let mut first_seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        first_seen.entry(id).or_insert(i);
    }
    let mut per_ticket: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for e in log.iter().filter(|e| e.3 != 0) {
        per_ticket
            .entry(e.3)
            .or_default()
            .push(first_seen[e.1.as_str()]);
    }
    for (t, order) in &per_ticket {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "ticket {t}: {order:?}"
        );
    }
    for q in &got {
        let body: Value = serde_json::from_str(q["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["id"], q["id"], "webhook-id is the event id: {q}");
    }
    ids.len() - unique.len()
}

#[test]
fn every_event_arrives_once_signed_and_in_order_per_ticket() {
    let r = Receiver::start();
    let wd = Workdir::new();
    config(&wd, &r.toml("desk", ""));
    some_traffic(&wd, "once");
    assert_eq!(event_log(&wd).len(), 10);
    let run = wd.mailticket(&["hooks", "--send", "--json"]).success();
    assert_eq!(run.json()["delivered"], 10, "{run:?}");
    assert_eq!(assert_all_arrived_in_order(&wd, &r), 0, "no duplicates");
    let list = wd.mailticket(&["hooks", "--json"]).success().json();
    let rows = list["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter()
            .all(|d| d["status"] == "delivered" && d["last_status"] == 200)
    );
    // nothing due: nothing sent again
    wd.mailticket(&["hooks", "--send"]).success();
    assert_eq!(r.requests().len(), 10);
    let t = wd.mailticket(&["hooks", "--test", "desk"]).success();
    assert!(t.stdout.contains("delivered"), "{t:?}");
    assert_eq!(r.requests().last().unwrap()["verified"], true);
}

#[test]
fn a_filter_picks_the_events_a_hook_gets() {
    let r = Receiver::start();
    let wd = Workdir::new();
    config(&wd, &r.toml("new", "events = [\"ticket.created\"]"));
    some_traffic(&wd, "filter");
    wd.mailticket(&["hooks", "--send"]).success();
    let got = r.delivered();
    assert_eq!(got.len(), 3);
    for q in got {
        let body: Value = serde_json::from_str(q["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["type"], "ticket.created");
    }
}

#[test]
fn gone_disables_the_hook_and_retry_after_is_honoured() {
    let r = Receiver::start();
    let wd = Workdir::new();
    config(&wd, &r.toml("desk", ""));
    ingest(&wd, &mail("gone-1@example.org", None, "help"));
    r.fault("410", None, 0);
    wd.mailticket(&["hooks", "--send"]).code(1);
    let list = wd.mailticket(&["hooks", "--json"]).success().json();
    assert_eq!(list["disabled"][0]["name"], "desk", "{list}");
    // exit 2: this config has no [[mailbox]], itself a configuration failure
    let doctor = wd.mailticket(&["doctor", "--json"]).code(2).json();
    let state = doctor["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scope"] == "hook desk" && s["step"] == "state")
        .unwrap_or_else(|| panic!("{doctor}"));
    assert_eq!(state["status"], "fail", "{state}");
    assert!(state["detail"].as_str().unwrap().contains("410"), "{state}");
    ingest(&wd, &mail("gone-2@example.org", None, "help"));
    wd.mailticket(&["hooks", "--send"]).success();
    assert_eq!(r.requests().len(), 1, "nothing more to a disabled hook");

    r.fault("429", Some(1), 2);
    wd.mailticket(&["hooks", "--enable", "desk"]).success();
    let t0 = mailticket_now();
    wd.mailticket(&["hooks", "--send"]).success();
    let list = wd.mailticket(&["hooks", "--json"]).success().json();
    let waiting: Vec<&Value> = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["last_status"] == 429)
        .collect();
    assert_eq!(waiting.len(), 1, "{list}");
    let next = waiting[0]["next_attempt_at"].as_i64().unwrap();
    assert!(
        (t0 + 1..=t0 + 4).contains(&next),
        "Retry-After 2: {next} vs {t0}"
    );
    std::thread::sleep(Duration::from_millis(3100));
    wd.mailticket(&["hooks", "--send"]).success();
    assert_eq!(assert_all_arrived_in_order(&wd, &r), 0);
}

fn mailticket_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_command_hook_gets_the_json_and_exit_75_retries() {
    let wd = Workdir::new();
    let out = wd.path("got.jsonl");
    let state = wd.path("first-done");
    let hook = wd.path("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {out}\necho >> {out}\nif [ -e {state} ]; then echo ok; exit 0; fi\n\
             touch {state}\necho busy >&2\nexit 75\n",
            out = out.display(),
            state = state.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config(
        &wd,
        &format!(
            "[[hook]]\nname = \"cmd\"\ncommand = [{}]\n",
            quoted(&hook.to_string_lossy())
        ),
    );
    ingest(&wd, &mail("cmd-1@example.org", None, "help"));
    wd.mailticket(&["hooks", "--send"]).success();
    let list = wd.mailticket(&["hooks", "--json"]).success().json();
    let d = &list["deliveries"][0];
    assert_eq!(d["status"], "pending", "{list}");
    assert_eq!(d["last_status"], 75);
    assert!(d["last_response"].as_str().unwrap().contains("busy"), "{d}");
    std::thread::sleep(Duration::from_millis(2100));
    wd.mailticket(&["hooks", "--send"]).success();
    let list = wd.mailticket(&["hooks", "--json"]).success().json();
    assert_eq!(list["deliveries"][0]["status"], "delivered", "{list}");
    let got: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], got[1], "the same event, the same id, both times");
    assert_eq!(got[0]["type"], "ticket.created");
    assert_eq!(
        got[0]["data"]["message"]["text"].as_str().unwrap().trim(),
        "help"
    );
}

#[test]
fn plain_http_off_loopback_is_refused_at_start_up() {
    let wd = Workdir::new();
    config(
        &wd,
        "[[hook]]\nname = \"far\"\nurl = \"http://hooks.example.com/x\"\nsecret = { env = \"S\" }\n",
    );
    let run = wd.mailticket(&["hooks"]).code(2);
    run.stderr_mentions(&["[[hook]] #1 (far)", "allow-insecure", "mailticket.toml"]);
}

#[test]
fn no_secret_or_signature_in_trace_logs() {
    let r = Receiver::start();
    let wd = Workdir::new();
    config(&wd, &r.toml("desk", ""));
    ingest(&wd, &mail("trace-1@example.org", None, "help"));
    let mut logs = String::new();
    for args in [["hooks", "--send"], ["hooks", "--test"]] {
        let mut cmd = wd.cmd(&["-vv"]);
        cmd.args(args).env("MAILTICKET_LOG", "trace");
        if args[1] == "--test" {
            cmd.arg("desk");
        }
        logs += &crate::harness::run(cmd, None).success().stderr;
    }
    assert!(logs.len() > 100, "trace logging is on: {logs}");
    let key = SECRET.trim_start_matches("whsec_");
    assert!(!logs.contains(key), "the key is in the log");
    for q in r.requests() {
        let sig = q["signature"].as_str().unwrap();
        assert!(
            !logs.contains(sig.trim_start_matches("v1,")),
            "a signature is in the log"
        );
    }
}

/// A Dovecot and a work directory whose config has its mailbox, `[watch]` timings for tests
/// and R as the hook `desk`.
fn watched_by(r: &Receiver) -> (Dovecot, Workdir) {
    let dc = Dovecot::start();
    let wd = Workdir::new();
    wd.write_config_with(
        &[dc.mailbox()],
        &format!(
            "[watch]\npoll-interval = 60\nbackoff-max = 2\nshutdown-timeout = 10\n\n{}",
            r.toml("desk", "")
        ),
    );
    (dc, wd)
}

#[test]
fn receiver_down_then_up_during_watch_gets_every_event() {
    let mut r = Receiver::start();
    let (dc, wd) = watched_by(&r);
    let w = wd.watch(&[]);
    w.wait_log("connected", 1, LONG);
    // up: latency from the append to the receiver
    let mut latencies = Vec::new();
    for n in 0..3 {
        let before = r.delivered().len();
        let t0 = Instant::now();
        let m = simple_mail(
            "C <c@example.net>",
            &format!("up-{n}@example.net"),
            &format!("Up {n}"),
            "",
        );
        dc.append("INBOX", &m, false);
        wait_until(LONG, "the webhook", || r.delivered().len() > before);
        latencies.push(t0.elapsed());
    }
    eprintln!("append -> webhook received: {latencies:?}");
    r.down();
    for n in 0..5 {
        let m = simple_mail(
            "D <d@example.net>",
            &format!("down-{n}@example.net"),
            &format!("Down {n}"),
            "",
        );
        dc.append("INBOX", &m, false);
    }
    wait_until(LONG, "the tickets", || wd.ticket_count() == 8);
    std::thread::sleep(Duration::from_secs(3));
    r.up();
    wait_until(LONG, "every event", || {
        let want: BTreeSet<String> = event_log(&wd).into_iter().map(|e| e.1).collect();
        let got: BTreeSet<String> = r
            .delivered()
            .iter()
            .map(|q| q["id"].as_str().unwrap().to_owned())
            .collect();
        want == got
    });
    let dup = assert_all_arrived_in_order(&wd, &r);
    eprintln!("duplicates after the outage: {dup}");
    drop(w);
}

#[test]
fn kill_9_of_watch_during_delivery_loses_nothing_and_resends_with_the_same_id() {
    let r = Receiver::start();
    r.fault("slow", None, 0);
    let (dc, wd) = watched_by(&r);
    for round in 0..20u32 {
        for n in 0..3 {
            let id = format!("kill-{round}-{n}@example.net");
            let from = format!("K <k{round}-{n}@example.net>");
            let m = simple_mail(&from, &id, &format!("Kill {round} {n}"), "");
            dc.append("INBOX", &m, false);
        }
        let before = r.requests().len();
        let w = wd.watch(&[]);
        let t0 = Instant::now();
        while r.requests().len() == before && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(u64::from(round % 4) * 40));
        w.signal("KILL");
        drop(w);
    }
    // a last, undisturbed run delivers the rest
    r.fault("ok", None, 0);
    let w = wd.watch(&[]);
    wait_until(LONG, "every event", || {
        let want: BTreeSet<String> = event_log(&wd).into_iter().map(|e| e.1).collect();
        let got: BTreeSet<String> = r
            .delivered()
            .iter()
            .map(|q| q["id"].as_str().unwrap().to_owned())
            .collect();
        want.len() == 60 && want == got
    });
    drop(w);
    let dup = assert_all_arrived_in_order(&wd, &r);
    // every duplicate carries its event's id and the same body
    let mut bodies: BTreeMap<String, Value> = BTreeMap::new();
    for q in r.delivered() {
        let mut body: Value = serde_json::from_str(q["body"].as_str().unwrap()).unwrap();
        body["timestamp"] = Value::Null;
        let id = q["id"].as_str().unwrap().to_owned();
        if let Some(first) = bodies.get(&id) {
            assert_eq!(first, &body, "a duplicate differs");
        }
        bodies.insert(id, body);
    }
    eprintln!(
        "kill -9 x20: 60 events, {} requests, {dup} duplicate deliveries",
        r.requests().len()
    );
}

#[test]
fn a_hung_or_dropped_request_is_retried_with_the_same_id() {
    let r = Receiver::start();
    let wd = Workdir::new();
    config(&wd, &r.toml("desk", ""));
    ingest(&wd, &mail("hang-1@example.org", None, "help"));
    r.fault("hang", Some(1), 0);
    let t0 = Instant::now();
    wd.mailticket(&["hooks", "--send"]).success();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the timeout (3 s) holds"
    );
    let row = |wd: &Workdir| {
        wd.mailticket(&["hooks", "--json"]).success().json()["deliveries"][0].clone()
    };
    let d = row(&wd);
    assert_eq!(d["status"], "pending", "{d}");
    let why = d["last_response"].as_str().unwrap();
    assert!(why.contains("timed out") || why.contains("3 s"), "{d}");
    r.fault("drop", Some(1), 0);
    std::thread::sleep(Duration::from_millis(1100));
    wd.mailticket(&["hooks", "--send"]).success();
    assert_eq!(row(&wd)["status"], "pending");
    std::thread::sleep(Duration::from_millis(2100));
    wd.mailticket(&["hooks", "--send"]).success();
    assert_eq!(row(&wd)["status"], "delivered");
    let ids: BTreeSet<String> = r
        .requests()
        .iter()
        .map(|q| q["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(r.requests().len(), 3);
    assert_eq!(ids.len(), 1, "one webhook-id on every attempt");
}
