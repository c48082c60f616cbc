//! Microsoft Graph as the transport: the built binary against the Graph stand-in
//! (`tests/env/graph-server`, HTTPS with the token server's test CA) and the local token
//! endpoint (`tests/env/oauth2-server`, which the stand-in asks about every bearer token).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::doctor::steps_of;

use crate::harness::{
    OAuth2Server, Prng, SUPPORT_ADDR, Workdir, bare_id, eprint_log_tail_if_panicking, free_port,
    huge_mail, mailgen, quoted, script, spawn, unique_dir, wait_until,
};

/// The support mailbox in the stand-in.
const USER: &str = SUPPORT_ADDR;

/// A Graph stand-in on two free loopback ports: the API over HTTPS on `port` (certificate
/// of the token server's test CA), its admin side over plain HTTP on `admin_port`. Dropping
/// it kills the process.
pub struct GraphServer {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: PathBuf,
    ca: PathBuf,
}

impl GraphServer {
    /// What the token server needs to issue Graph tokens with the mail roles.
    pub const TOKEN_ENV: [(&str, &str); 2] = [
        (
            "OAUTH2_MAIL_RESOURCES",
            "https://outlook.office365.com https://graph.microsoft.com",
        ),
        ("OAUTH2_APP_ROLES", "Mail.ReadWrite Mail.Send"),
    ];

    pub fn start(o: &OAuth2Server) -> GraphServer {
        let dir = unique_dir("mtg");
        let (port, admin_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new("python3")
            .arg(script("graph-server"))
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("--cert")
            .arg(o.dir.join("tls/server.crt"))
            .arg("--key")
            .arg(o.dir.join("tls/server.key"))
            .args([
                "--introspect",
                &format!("http://127.0.0.1:{}/introspect", o.port),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let g = GraphServer {
            child,
            port,
            admin_port,
            dir,
            ca: o.ca_file(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(Instant::now() < deadline, "graph-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    /// The API root as `graph-url`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/v1.0", self.port)
    }

    /// One admin request; the JSON answer, which must be 200.
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(" 200 "), "{method} {path}: {head}\n{body}");
        serde_json::from_str(body).unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        self.admin("POST", path, body.to_string().as_bytes())
    }

    /// Delivers one message into the inbox of `user`, received `age` seconds ago.
    pub fn deliver(&self, user: &str, raw: &[u8], read: bool, age: u32) {
        let r = if read { 1 } else { 0 };
        self.admin(
            "POST",
            &format!("/admin/deliver?user={user}&read={r}&age={age}"),
            raw,
        );
    }

    /// Seeds the inbox of `user` with `messages`, written as .eml files first.
    pub fn seed(&self, user: &str, messages: &[Vec<u8>]) {
        let dir = self.dir.join(format!(
            "seed-{}",
            Prng::new(messages.len() as u64).next_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, m) in messages.iter().enumerate() {
            std::fs::write(dir.join(format!("{i:06}.eml")), m).unwrap();
        }
        let dir = dir.to_string_lossy().into_owned();
        self.post(
            "/admin/seed",
            &serde_json::json!({ "user": user, "dir": dir }),
        );
    }

    pub fn messages(&self, user: &str, folder: &str) -> Vec<Value> {
        let v = self.admin(
            "GET",
            &format!("/admin/messages?user={user}&folder={folder}"),
            b"",
        );
        v.as_array().unwrap().clone()
    }

    pub fn stats(&self) -> Value {
        self.admin("GET", "/admin/stats", b"")
    }

    pub fn sent(&self) -> Vec<Value> {
        self.admin("GET", "/admin/sent", b"")
            .as_array()
            .unwrap()
            .clone()
    }

    /// A `[[mailbox]]` read through this stand-in with the app-only token of `o`.
    pub fn mailbox_toml(&self, o: &OAuth2Server, extra: &str) -> String {
        format!(
            "[[mailbox]]\nname = \"support\"\ntransport = \"graph\"\ngraph-url = {}\n\
             ca-file = {}\nusername = {}\naddresses = [{}]\ntimeout = 20\n{extra}\n\
             oauth2 = {{ flow = \"client-credentials\", token-url = {}, client-id = {}, \
             client-secret = {}, scope = \"https://graph.microsoft.com/.default\" }}\n",
            quoted(&self.url()),
            quoted(&self.ca.to_string_lossy()),
            quoted(USER),
            quoted(USER),
            quoted(&o.token_url()),
            quoted(OAuth2Server::CLIENT_ID),
            quoted(OAuth2Server::CLIENT_SECRET),
        )
    }
}

impl Drop for GraphServer {
    fn drop(&mut self) {
        eprint_log_tail_if_panicking(&self.dir.join("server.log"), 30);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token server, a Graph stand-in, and a work directory whose config reads the stand-in.
fn setup(extra_mailbox: &str, extra: &str) -> (OAuth2Server, GraphServer, Workdir) {
    let o = OAuth2Server::start_with(&GraphServer::TOKEN_ENV);
    let g = GraphServer::start(&o);
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{}\n{extra}",
        quoted(&wd.db().to_string_lossy()),
        g.mailbox_toml(&o, extra_mailbox)
    ));
    (o, g, wd)
}

fn ids_of(messages: &[Vec<u8>]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            let line = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .unwrap();
            bare_id(line.split_once(':').unwrap().1)
        })
        .collect()
}

fn count(v: &Value, key: &str) -> u64 {
    v["mailboxes"][0]["counts"][key]
        .as_u64()
        .or_else(|| v["mailboxes"][0][key].as_u64())
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn graph_backlog_becomes_tickets_once_and_is_marked_read() {
    let (_o, g, wd) = setup("", "");
    let mail = mailgen::many(30, 7);
    g.seed(USER, &mail[..25]);
    // Read before the first run: not part of the backlog.
    for m in &mail[25..] {
        g.deliver(USER, m, true, 3600);
    }
    // A dry run reads and judges, and keeps and touches nothing.
    let dry = wd
        .mailticket(&["sync", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(count(&dry, "created"), 25, "{dry}");
    let unread = g.messages(USER, "inbox");
    assert_eq!(unread.iter().filter(|m| m["isRead"] == false).count(), 25);
    assert!(
        g.stats()["by_kind"].get("patch").is_none(),
        "no post-action"
    );
    let first = wd.sync();
    assert_eq!(count(&first, "fetched"), 25, "{first}");
    assert_eq!(count(&first, "created") + count(&first, "threaded"), 25);
    let ticketed: BTreeSet<String> = wd.ticketed_message_ids().into_iter().collect();
    assert_eq!(ticketed, ids_of(&mail[..25]));
    let inbox = g.messages(USER, "inbox");
    assert_eq!(inbox.len(), 30);
    assert!(
        inbox.iter().all(|m| m["isRead"] == true),
        "every message marked read"
    );
    assert_eq!(wd.tickets().len() as u64, count(&first, "created"));

    // The marks are changes in the next delta round: known, so not fetched again.
    let second = wd.sync();
    assert_eq!(count(&second, "fetched"), 0, "{second}");
    let stats = g.stats();
    assert_eq!(
        stats["by_kind"]["value"], 50,
        "each $value fetched once by the dry run, once by the sync: {stats}"
    );
    // New mail after the first run is taken even when someone read it first.
    g.deliver(USER, &mailgen::one(40, 7, false), true, 0);
    let third = wd.sync();
    assert_eq!(count(&third, "fetched"), 1, "{third}");
}

#[test]
fn graph_expired_delta_token_relists_without_duplicates() {
    let (_o, g, wd) = setup("after = { move = \"Processed\" }", "");
    let mail = mailgen::many(12, 9);
    g.seed(USER, &mail[..8]);
    wd.sync();
    assert_eq!(g.messages(USER, "inbox").len(), 0, "moved away");
    g.post("/admin/expire-delta", &serde_json::json!({}));
    // The moved messages come back to the inbox (someone moved them back), and new mail comes.
    g.seed(USER, &mail[..12]);
    let after = wd.sync();
    assert_eq!(
        count(&after, "fetched"),
        4,
        "only the new ones are fetched: {after}"
    );
    assert_eq!(count(&after, "duplicates"), 8, "{after}");
    assert_eq!(wd.ticketed_message_ids().len(), 12);
}

/// A 500 or 502 (a fault of the service, without Retry-After) on a read is asked again after
/// a backoff: the sync goes on instead of failing the mailbox until the next run.
#[test]
fn graph_a_fault_of_the_service_on_a_read_is_asked_again() {
    let (_o, g, wd) = setup("", "");
    g.seed(USER, &mailgen::many(6, 5));
    g.post(
        "/admin/throttle",
        &serde_json::json!({ "count": 1, "status": 500, "match": "delta" }),
    );
    let s = wd.sync();
    assert_eq!(count(&s, "fetched"), 6, "{s}");
    g.seed(USER, &mailgen::many(12, 5)[6..]);
    g.post(
        "/admin/throttle",
        &serde_json::json!({ "count": 2, "status": 502, "match": "$value" }),
    );
    let s = wd.sync();
    assert_eq!(count(&s, "fetched"), 6, "{s}");
    assert_eq!(g.stats()["throttled"], 3, "every fault was met");
    assert_eq!(wd.ticket_count(), 12);
}

#[test]
fn graph_throttling_is_honoured() {
    let (_o, g, wd) = setup("", "");
    g.seed(USER, &mailgen::many(20, 3));
    g.post("/admin/delay", &serde_json::json!({ "seconds": 0.05 }));
    g.post(
        "/admin/throttle",
        &serde_json::json!({ "count": 2, "retry_after": 2, "status": 429 }),
    );
    let t0 = Instant::now();
    let s = wd.sync();
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "waited both Retry-Afters"
    );
    assert_eq!(count(&s, "fetched"), 20, "{s}");
    let stats = g.stats();
    assert_eq!(stats["throttled"], 2, "{stats}");
    assert_eq!(
        stats["early"], 0,
        "nothing came back before Retry-After: {stats}"
    );

    // Throttled while four $value fetches are in flight: the whole mailbox waits (503 too).
    g.seed(USER, &mailgen::many(40, 4)[20..]);
    g.post(
        "/admin/throttle",
        &serde_json::json!({ "count": 1, "retry_after": 3, "status": 503, "match": "$value" }),
    );
    let t0 = Instant::now();
    let s = wd.sync();
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "waited the Retry-After"
    );
    assert_eq!(count(&s, "fetched"), 20, "{s}");
    let stats = g.stats();
    assert_eq!(stats["throttled"], 3, "{stats}");
    assert_eq!(
        stats["early"], 0,
        "nothing came back before Retry-After: {stats}"
    );
    assert_eq!(
        stats["concurrency_refused"], 0,
        "never more than 4 at once: {stats}"
    );
    assert!(
        stats["max_concurrent"].as_u64().unwrap() > 1,
        "$value fetched in parallel: {stats}"
    );
}

#[test]
fn graph_revoked_consent_is_a_clear_failure() {
    let (_o, g, wd) = setup("", "");
    g.seed(USER, &mailgen::many(2, 5));
    wd.sync();
    g.post(
        "/admin/revoke",
        &serde_json::json!({ "appid": OAuth2Server::CLIENT_ID }),
    );
    let run = wd.mailticket(&["sync"]).code(1);
    run.stderr_mentions(&["Graph refused the access token", USER]);
}

#[test]
fn graph_sync_killed_at_random_moments_tickets_every_message_once() {
    let (_o, g, wd) = setup("", "");
    let mail = mailgen::many(150, 21);
    g.seed(USER, &mail);
    let mut rng = Prng::new(0x6A_F00D);
    let (mut killed_midway, mut progress) = (0, Vec::new());
    for _ in 0..12 {
        let mut child = spawn(wd.cmd(&["sync"]));
        std::thread::sleep(Duration::from_millis(rng.range(100, 1200)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let tickets = wd.tickets().len();
        if status.signal() == Some(9) && tickets < 150 {
            killed_midway += 1;
        }
        assert!(status.signal() == Some(9) || status.success(), "{status}");
        progress.push(tickets);
    }
    eprintln!("messages ticketed after each kill: {progress:?}");
    assert!(killed_midway > 0, "no kill landed midway: {progress:?}");
    wd.mailticket(&["sync"]).success();
    let ids = wd.ticketed_message_ids();
    assert_eq!(ids.len(), 150, "every message exactly once");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), ids_of(&mail));
    assert!(
        g.messages(USER, "inbox")
            .iter()
            .all(|m| m["isRead"] == true)
    );
}

#[test]
fn graph_acks_go_out_through_send_mail_with_our_headers() {
    let smtp = format!(
        "[smtp]\ntransport = \"graph\"\ngraph-url = \"{{URL}}\"\nca-file = \"{{CA}}\"\n\
         username = {}\nfrom = \"Support <{USER}>\"\n\n[ack]\nenabled = true\nmax-age = 8640000000\n",
        quoted(USER)
    );
    let o = OAuth2Server::start_with(&GraphServer::TOKEN_ENV);
    let g = GraphServer::start(&o);
    let wd = Workdir::new();
    let smtp = smtp
        .replace("{URL}", &g.url())
        .replace("{CA}", &o.ca_file().to_string_lossy());
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{}\n{smtp}",
        quoted(&wd.db().to_string_lossy()),
        g.mailbox_toml(&o, "")
    ));
    let mail = mailgen::many(6, 13);
    g.seed(USER, &mail);
    let s = wd.sync();
    let acked = count(&s, "acks_queued");
    assert!(acked > 0, "{s}");
    let sent = g.sent();
    assert_eq!(sent.len() as u64, acked, "each ack sent once");
    let asked: BTreeSet<String> = ids_of(&mail);
    for m in &sent {
        assert_eq!(m["content_type"], "text/plain", "{m}");
        let mime = m["mime"].as_str().unwrap();
        let header = |name: &str| -> String {
            mime.lines()
                .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .map(|l| l.split_once(':').unwrap().1.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {mime}"))
        };
        assert_eq!(header("auto-submitted"), "auto-replied");
        assert_eq!(header("x-auto-response-suppress"), "All");
        assert!(asked.contains(&bare_id(&header("in-reply-to"))), "{mime}");
        assert!(header("references").contains(&header("in-reply-to")));
        assert!(header("from").contains(USER));
        // Our own Message-ID, recorded on the ticket for threading.
        let ours = bare_id(&header("message-id"));
        let tickets = wd.tickets();
        let found = tickets.iter().any(|t| {
            let shown = wd.show(crate::harness::id_of(t));
            shown["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["direction"] == "out" && m["message_id"] == ours.as_str())
        });
        assert!(found, "sent Message-ID {ours} is on a ticket");
    }
    // Nothing is sent twice.
    wd.sync();
    assert_eq!(g.sent().len() as u64, acked);
}

#[test]
fn graph_watch_polls_new_mail_within_seconds_and_stops_on_sigterm() {
    let (_o, g, wd) = setup(
        "poll-interval = 1",
        "[watch]\nbackoff-max = 2\nshutdown-timeout = 10\n",
    );
    g.seed(USER, &mailgen::many(3, 17));
    let mut w = wd.watch(&[]);
    wait_until(Duration::from_secs(30), "the backlog", || {
        wd.ticket_count() == 3
    });
    let mut latencies = Vec::new();
    for n in 0..3 {
        let t0 = Instant::now();
        g.deliver(USER, &mailgen::one(100 + n, 17, false), false, 0);
        wait_until(Duration::from_secs(30), "the new ticket", || {
            wd.ticket_count() == 4 + n as usize
        });
        latencies.push(t0.elapsed());
    }
    eprintln!("new mail -> ticket over Graph: {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(5)),
        "{latencies:?}"
    );
    assert_eq!(w.count("polling the Graph delta query"), 1, "{}", w.log());
    // The folder is looked up once per session, not on every poll.
    assert_eq!(g.stats()["by_kind"]["folder"], 1, "{}", g.stats());
    w.stop(Duration::from_secs(10));
    assert!(w.log().contains("stopped"), "{}", w.log());
    assert!(
        g.messages(USER, "inbox")
            .iter()
            .all(|m| m["isRead"] == true)
    );
}

/// A config reading and sending through the stand-ins, with a token server started with
/// `roles` as the app's Graph permissions.
fn setup_with_send(roles: &str) -> (OAuth2Server, GraphServer, Workdir) {
    let o = OAuth2Server::start_with(&[GraphServer::TOKEN_ENV[0], ("OAUTH2_APP_ROLES", roles)]);
    let g = GraphServer::start(&o);
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{}\n[smtp]\ntransport = \"graph\"\ngraph-url = {}\nca-file = {}\n\
         username = {}\nfrom = {}\n",
        quoted(&wd.db().to_string_lossy()),
        g.mailbox_toml(&o, "after = { move = \"Processed\" }"),
        quoted(&g.url()),
        quoted(&o.ca_file().to_string_lossy()),
        quoted(USER),
        quoted(USER),
    ));
    g.post("/admin/mailbox", &serde_json::json!({ "user": USER }));
    (o, g, wd)
}

#[test]
fn graph_doctor_checks_token_mailbox_folder_and_names_what_is_missing() {
    let (_o, g, wd) = setup_with_send("Mail.ReadWrite Mail.Send");
    let v = wd.mailticket(&["doctor", "--json"]).success().json();
    let ok = |s: &str| (s.to_owned(), "ok".to_owned());
    assert_eq!(
        steps_of(&v, "mailbox support"),
        [
            ok("secret"),
            ok("oauth2"),
            ok("permissions"),
            ok("mailbox"),
            ok("folder"),
            ("move-target".into(), "warn".into())
        ],
        "{v}"
    );
    assert_eq!(
        steps_of(&v, "smtp"),
        [ok("secret"), ok("oauth2"), ok("permissions"), ok("send")]
    );
    // An application access policy that leaves the mailbox out.
    g.post(
        "/admin/policy",
        &serde_json::json!({ "user": USER, "deny": true }),
    );
    let run = wd.mailticket(&["doctor"]).code(1);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains("AccessPolicy") && text.contains("application access policy"),
        "{text}"
    );

    // An app without Mail.Send: doctor names it; reading still works.
    let (_o2, _g2, wd2) = setup_with_send("Mail.ReadWrite");
    let v = wd2.mailticket(&["doctor", "--json"]).code(1).json();
    assert_eq!(
        steps_of(&v, "smtp")[2],
        ("permissions".into(), "fail".into()),
        "{v}"
    );
    let smtp: Vec<&Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["scope"] == "smtp")
        .collect();
    assert!(
        smtp[2]["detail"]
            .as_str()
            .unwrap()
            .contains("lacks Mail.Send"),
        "{v}"
    );
    assert!(
        smtp[2]["fix"]
            .as_str()
            .unwrap()
            .contains("Grant admin consent"),
        "{v}"
    );
}

#[test]
fn graph_message_over_max_size_is_quarantined_by_its_header() {
    let (_o, g, wd) = setup("max-message-size = \"4 KiB\"", "");
    let big = mailgen::one(3, 8, true);
    assert!(big.len() > 8 << 10, "a large message: {} bytes", big.len());
    g.deliver(USER, &big, false, 0);
    g.deliver(USER, &mailgen::one(4, 8, false), false, 0);
    let s = wd.sync();
    assert_eq!(count(&s, "quarantined"), 1, "{s}");
    assert_eq!(count(&s, "created"), 1, "{s}");
    assert!(
        g.messages(USER, "inbox")
            .iter()
            .all(|m| m["isRead"] == true)
    );
    let q = wd.mailticket(&["quarantine"]).success();
    assert!(q.stdout.contains("too large"), "{}", q.stdout);
}

#[test]
fn graph_a_large_message_goes_through_a_spool_file_and_is_kept_whole() {
    let (_o, g, wd) = setup("", "");
    let (big, size, sha) = huge_mail("graph-big@customer.example", 4, 43);
    g.deliver(USER, &big, false, 0);
    g.deliver(USER, &mailgen::one(5, 8, false), false, 0);
    let s = wd.sync();
    assert_eq!(count(&s, "created"), 2, "{s}");
    wd.assert_spooled_and_kept("graph-big@customer.example", &big, size, &sha);
}

#[test]
fn graph_a_token_for_another_api_is_named_by_doctor_and_sync() {
    let (_o, g, wd) = setup("", "");
    // The IMAP app scope instead of Graph's: the token server issues it, Graph refuses it.
    let text = std::fs::read_to_string(wd.config()).unwrap().replace(
        "https://graph.microsoft.com/.default",
        OAuth2Server::SCOPE_APP,
    );
    wd.write_raw_config(&text);
    g.seed(USER, &mailgen::many(1, 2));
    let v = wd.mailticket(&["doctor", "--json"]).code(1).json();
    let perm: Vec<&Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "permissions")
        .collect();
    assert_eq!(perm[0]["status"], "fail", "{v}");
    assert!(
        perm[0]["detail"]
            .as_str()
            .unwrap()
            .contains("not Microsoft Graph"),
        "{v}"
    );
    let run = wd.mailticket(&["sync"]).code(1);
    run.stderr_mentions(&[
        "Graph refused the access token",
        "Invalid audience",
        "oauth2 scope",
    ]);
    assert_eq!(wd.tickets().len(), 0);
}

#[test]
fn graph_watch_waits_out_a_refused_token_and_goes_on_when_consent_returns() {
    let (_o, g, wd) = setup(
        "poll-interval = 1",
        "[watch]\nbackoff-min = 1\nbackoff-max = 2\nshutdown-timeout = 10\n",
    );
    let mut w = wd.watch(&[]);
    w.wait_log("polling the Graph delta query", 1, Duration::from_secs(30));
    let revoke = |undo: bool| {
        let body = serde_json::json!({ "appid": OAuth2Server::CLIENT_ID, "undo": undo });
        g.post("/admin/revoke", &body);
    };
    revoke(false);
    w.wait_log("OAUTH2 TOKEN REFUSED", 2, Duration::from_secs(30));
    g.deliver(USER, &mailgen::one(1, 23, false), false, 0);
    assert_eq!(wd.ticket_count(), 0);
    revoke(true);
    wait_until(
        Duration::from_secs(30),
        "the ticket after consent returned",
        || wd.ticket_count() == 1,
    );
    w.stop(Duration::from_secs(10));
}
