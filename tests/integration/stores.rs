//! One list of behaviour tests, run against both stores: the embedded SQLite file and a
//! PostgreSQL database (a throw-away cluster per test). Each scenario is written once and
//! takes the store it runs on; `on_both_stores!` makes one `#[test]` per store.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::{
    Dovecot, Prng, Workdir, assert_summary, created, huge_mail, id_of, mailgen, run, simple_mail,
    spawn, wait_until,
};
use crate::pg_harness::Postgres;
use crate::sink::Sink;

/// The store a scenario runs on; the PostgreSQL cluster lives as long as this value.
pub enum Engine {
    Sqlite,
    Postgres(Postgres),
}

impl Engine {
    fn sqlite() -> Engine {
        Engine::Sqlite
    }

    fn postgres() -> Engine {
        Engine::Postgres(Postgres::start())
    }

    /// A work directory whose configs use this store.
    fn workdir(&self) -> Workdir {
        match self {
            Engine::Sqlite => Workdir::new(),
            Engine::Postgres(pg) => Workdir::on_store(pg.store_toml()),
        }
    }

    /// A work directory with these mailboxes, and acknowledgements sent to `sink`.
    fn with_acks(&self, dc: &Dovecot, sink: &Sink) -> Workdir {
        let wd = self.workdir();
        wd.write_config_with(
            &[dc.mailbox()],
            &format!(
                "{}\n[ack]\nenabled = true\nmax-age = 8640000000\n",
                sink.smtp_toml()
            ),
        );
        wd
    }
}

macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Engine::sqlite());
            })+
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Engine::postgres());
            })+
        }
    };
}

on_both_stores!(
    backlog_becomes_tickets_once_and_a_rerun_creates_nothing,
    replies_thread_and_status_changes_stick,
    acks_go_out_once_and_agent_replies_thread,
    a_malformed_message_is_quarantined_and_the_rest_ticketed,
    sync_killed_at_random_moments_loses_and_duplicates_nothing,
    watch_tickets_new_mail,
    the_event_feed_lists_what_happened,
    files_and_pipes_and_the_reading_commands,
    a_large_message_is_fetched_in_parts_and_kept_byte_for_byte,
    a_sync_killed_while_spooling_stores_the_large_message_once_on_rerun,
    a_large_message_that_is_no_message_is_quarantined_in_parts,
);

/// The envelope recipients of a message the sink received.
fn rcpt_tos(m: &crate::sink::Received) -> Vec<String> {
    m.envelope["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn backlog_becomes_tickets_once_and_a_rerun_creates_nothing(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(60, 2, 21);
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    // A dry run (one transaction, rolled back: on PostgreSQL without the idle timeout).
    let dry = wd
        .mailticket(&["sync", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(dry["created"], 62, "{dry}");
    assert!(wd.tickets().is_empty(), "a dry run kept tickets");
    assert_eq!(dc.unseen("INBOX"), 62);
    assert_summary(&wd.sync(), created(62));
    assert_summary(&wd.sync(), created(0));
    let tickets = wd.tickets();
    assert_eq!(tickets.len(), 62);
    let ids: BTreeSet<u64> = tickets.iter().map(id_of).collect();
    assert_eq!(ids.len(), 62);
    let shown = wd.show(*ids.iter().next().unwrap());
    assert_eq!(shown["messages"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(dc.unseen("INBOX"), 0);
    // The raw bytes come back exactly as the server had them.
    let out = wd.path("all.mbox");
    wd.mailticket(&[
        "export",
        "--format",
        "mbox",
        "--out",
        &out.to_string_lossy(),
    ])
    .success();
    let mbox = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        mbox.matches("\nFrom ").count() + 1,
        62,
        "one mbox entry per message"
    );
}

fn replies_thread_and_status_changes_stick(e: &Engine) {
    let dc = Dovecot::start();
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    let first = simple_mail(
        "Anna <anna@customer.example>",
        "q1@customer.example",
        "Printer on fire",
        "",
    );
    dc.append("INBOX", &first, false);
    assert_summary(&wd.sync(), created(1));
    let reply = simple_mail(
        "Anna <anna@customer.example>",
        "q2@customer.example",
        "Re: Printer on fire",
        "In-Reply-To: <q1@customer.example>\r\nReferences: <q1@customer.example>\r\n",
    );
    dc.append("INBOX", &reply, false);
    wd.sync();
    let tickets = wd.tickets();
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    let id = id_of(&tickets[0]);
    assert_eq!(tickets[0]["messages"], 2);
    wd.mailticket(&["close", &id.to_string()]).success();
    assert_eq!(wd.show(id)["status"], "closed");
    // A customer's answer reopens it.
    let again = simple_mail(
        "Anna <anna@customer.example>",
        "q3@customer.example",
        "Re: Printer on fire",
        "In-Reply-To: <q2@customer.example>\r\n",
    );
    dc.append("INBOX", &again, false);
    wd.sync();
    let t = wd.show(id);
    assert_eq!(t["status"], "open", "{t}");
    assert_eq!(t["messages"].as_array().unwrap().len(), 3);
    // Case-blind search, as on SQLite.
    let found = wd
        .mailticket(&["search", "PRINTER", "--json"])
        .success()
        .json();
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
}

fn acks_go_out_once_and_agent_replies_thread(e: &Engine) {
    let dc = Dovecot::start();
    let sink = Sink::start();
    let wd = e.with_acks(&dc, &sink);
    for i in 0..5 {
        let mail = simple_mail(
            &format!("Customer {i} <c{i}@customer.example>"),
            &format!("a{i}@customer.example"),
            &format!("Question {i}"),
            "",
        );
        dc.append("INBOX", &mail, false);
    }
    // An out-of-office notice is never answered.
    let ooo = simple_mail(
        "Bob <bob@customer.example>",
        "ooo@customer.example",
        "Out of office",
        "Auto-Submitted: auto-replied\r\n",
    );
    dc.append("INBOX", &ooo, false);
    wd.sync();
    wd.sync();
    let got = sink.messages();
    assert_eq!(
        got.len(),
        5,
        "one acknowledgement per request, none for the auto-reply"
    );
    let rcpts: BTreeSet<String> = got.iter().flat_map(rcpt_tos).collect();
    assert_eq!(rcpts.len(), 5);
    assert!(!rcpts.contains("bob@customer.example"));
    let t = wd
        .tickets()
        .into_iter()
        .find(|t| t["subject"] == "Question 3")
        .unwrap();
    let id = id_of(&t).to_string();
    wd.mailticket(&[
        "reply",
        &id,
        "--body",
        "Have you tried turning it off and on?",
    ])
    .success();
    assert_eq!(sink.messages().len(), 6);
    let shown = wd.show(id_of(&t));
    let dirs: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["direction"].as_str().unwrap())
        .collect();
    assert_eq!(dirs, ["in", "out", "out"], "{shown}");
}

fn a_malformed_message_is_quarantined_and_the_rest_ticketed(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(5, 0, 22);
    dc.append("INBOX", b"\x01\x02 this is no mail\r\n", false);
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    wd.sync();
    assert_eq!(wd.tickets().len(), 5);
    let q = wd
        .mailticket(&["quarantine", "list", "--json"])
        .success()
        .json();
    let rows = q.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{q}");
    let id = rows[0]["id"].to_string();
    let out = wd.path("q.eml");
    wd.mailticket(&[
        "quarantine",
        "export",
        &id,
        "--output",
        &out.to_string_lossy(),
    ])
    .success();
    let raw = std::fs::read(&out).unwrap();
    assert!(raw.ends_with(b"this is no mail\r\n"), "{raw:?}");
}

/// A message over the spool's threshold that cannot be parsed goes to the quarantine from
/// its spool file, in 1 MiB parts, and comes back byte for byte.
fn a_large_message_that_is_no_message_is_quarantined_in_parts(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(2, 0, 28);
    let (huge, _, _) = huge_mail("noheader@customer.example", 4, 28);
    // Without its From, To, Subject, Date and Message-ID: not a message.
    let start = huge
        .windows(13)
        .position(|w| w == b"MIME-Version:")
        .unwrap();
    let bad = huge[start..].to_vec();
    dc.append("INBOX", &bad, false);
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    wd.sync();
    assert_eq!(wd.tickets().len(), 2);
    let quarantined = |wd: &Workdir| {
        let q = wd
            .mailticket(&["quarantine", "list", "--json"])
            .success()
            .json();
        q.as_array().unwrap().clone()
    };
    let rows = quarantined(&wd);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["size"].as_u64(), Some(bad.len() as u64), "{rows:?}");
    let id = rows[0]["id"].to_string();
    let shown = wd
        .mailticket(&["quarantine", "show", &id, "--raw"])
        .success();
    assert!(shown.stdout.as_bytes() == bad.as_slice(), "byte for byte");
    let layout = e.scalar(
        &wd,
        &format!(
            "SELECT count(*) || ':' || (SELECT length(raw) FROM quarantine WHERE id = {id}) \
             FROM quarantine_part WHERE quarantine = {id}"
        ),
    );
    assert_eq!(layout, format!("{}:0", bad.len().div_ceil(1 << 20)));
    wd.sync();
    assert_eq!(quarantined(&wd).len(), 1, "quarantined once");
    wd.mailticket(&["quarantine", "delete", &id, "--yes"])
        .success();
    assert_eq!(
        e.scalar(&wd, "SELECT count(*) || '' FROM quarantine_part"),
        "0"
    );
}

fn sync_killed_at_random_moments_loses_and_duplicates_nothing(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(150, 20, 23);
    let on_server: BTreeSet<String> = dc
        .messages("INBOX")
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let sink = Sink::start();
    let wd = e.with_acks(&dc, &sink);
    let mut rng = Prng::new(0xC0FF_EE00);
    let mut killed = 0;
    for _ in 0..8 {
        let mut child = spawn(wd.cmd(&["sync"]));
        std::thread::sleep(Duration::from_millis(rng.range(50, 500)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(status.signal() == Some(9) || status.success(), "{status}");
        killed += usize::from(status.signal() == Some(9));
    }
    assert!(killed > 0, "no kill landed");
    wd.sync();
    let tickets = wd.tickets();
    assert_eq!(tickets.len(), on_server.len(), "every message exactly once");
    let ids = wd.ticketed_message_ids();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no Message-ID twice");
    assert_eq!(unique, on_server, "exactly the messages on the server");
    let acked: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.header("In-Reply-To").expect("an ack has In-Reply-To"))
        .collect();
    let unique: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "no acknowledgement twice");
    assert!(acked.len() + 8 >= on_server.len(), "{} acks", acked.len());
}

fn watch_tickets_new_mail(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(3, 0, 24);
    let wd = e.workdir();
    wd.write_config_with(&[dc.mailbox()], "[watch]\nidle = true\n");
    let mut w = wd.watch(&[]);
    wait_until(Duration::from_secs(30), "the backlog", || {
        wd.ticket_count() == 3
    });
    for i in 0..4 {
        let mail = simple_mail(
            "Anna <anna@customer.example>",
            &format!("w{i}@customer.example"),
            &format!("New {i}"),
            "",
        );
        dc.append("INBOX", &mail, false);
    }
    wait_until(Duration::from_secs(30), "new mail", || {
        wd.ticket_count() == 7
    });
    w.stop(Duration::from_secs(20));
    assert_eq!(wd.tickets().len(), 7);
}

fn the_event_feed_lists_what_happened(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(4, 0, 25);
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    wd.sync();
    let run = wd.mailticket(&["events", "--json"]).success();
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created = lines
        .iter()
        .filter(|v| v["type"] == "ticket.created")
        .count();
    assert_eq!(created, 4, "{lines:?}");
    let ids: BTreeSet<&str> = lines.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "event ids are unique");
}

fn files_and_pipes_and_the_reading_commands(e: &Engine) {
    let wd = e.workdir();
    wd.write_config(&[]);
    let mbox = wd.path("in.mbox");
    mailgen::mbox(&mbox, 12, 26);
    wd.mailticket(&["import", &mbox.to_string_lossy()])
        .success();
    // The same file again: every message is already stored.
    wd.mailticket(&["import", &mbox.to_string_lossy()])
        .success();
    assert_eq!(wd.tickets().len(), 12);
    let mail = simple_mail(
        "Zoe <zoe@customer.example>",
        "piped@customer.example",
        "Piped in",
        "",
    );
    run(wd.cmd(&["ingest"]), Some(&mail)).success();
    run(wd.cmd(&["ingest"]), Some(&mail)).success();
    let zoe = wd
        .mailticket(&["tickets", "--customer", "ZOE@", "--json"])
        .success()
        .json();
    let zoe = zoe.as_array().unwrap();
    assert_eq!(zoe.len(), 1, "{zoe:?}");
    let id = id_of(&zoe[0]).to_string();
    let raw = wd.mailticket(&["show", &id, "--raw"]).success();
    assert!(
        raw.stdout.contains("Message-ID: <piped@customer.example>"),
        "{raw:?}"
    );
    let by_id = wd
        .mailticket(&["show", "piped@customer.example", "--json"])
        .success()
        .json();
    assert_eq!(by_id["id"].to_string(), id);
    let out = wd.path("one");
    wd.mailticket(&[
        "export",
        "--ticket",
        &id,
        "--format",
        "eml",
        "--out",
        &out.to_string_lossy(),
    ])
    .success();
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), mail, "byte for byte");
    let outbox = wd.mailticket(&["outbox", "--json"]).success().json();
    assert_eq!(outbox.as_array().map(Vec::len), Some(0), "{outbox}");
    wd.mailticket(&["hooks", "--json"]).success();
    wd.mailticket(&["oauth2", "status"]).success();
}

impl Engine {
    /// One text value a query gives, read straight from the store of `wd`.
    fn scalar(&self, wd: &Workdir, sql: &str) -> String {
        match self {
            Engine::Sqlite => rusqlite::Connection::open(wd.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Engine::Postgres(pg) => pg.psql(sql),
        }
    }

    /// Where a sync of `wd` spools large messages: beside an SQLite store, else the
    /// temporary folder.
    fn spool_dir(&self, wd: &Workdir) -> std::path::PathBuf {
        match self {
            Engine::Sqlite => wd.db().parent().unwrap().to_owned(),
            Engine::Postgres(_) => std::env::temp_dir(),
        }
    }
}

/// The spool files of process `pid` in `dir`.
fn spool_files(dir: &std::path::Path, pid: u32) -> Vec<String> {
    let prefix = format!(".mailticket-spool-{pid}-");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// How the message `message_id` is kept: `codec:number of raw parts`.
fn layout(e: &Engine, wd: &Workdir, message_id: &str) -> String {
    e.scalar(
        wd,
        &format!(
            "SELECT codec || ':' || (SELECT count(*) FROM raw_part WHERE message = m.id) \
             FROM message m WHERE message_id = '{message_id}'"
        ),
    )
}

fn a_large_message_is_fetched_in_parts_and_kept_byte_for_byte(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(3, 1, 27);
    let (huge, size, sha) = huge_mail("huge@customer.example", 12, 27);
    dc.append("INBOX", &huge, false);
    // Exactly three parts long: the fourth part asked for is past the end.
    let mut exact = simple_mail("Bo <bo@customer.example>", "exact@x", "Exact", "");
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz 0123456789 abcdefghijklmnopqrstuvwxyz\r\n";
    while exact.len() + line.len() <= 3 << 20 {
        exact.extend_from_slice(line);
    }
    exact.resize((3 << 20) - 2, b'.');
    exact.extend_from_slice(b"\r\n");
    dc.append("INBOX", &exact, false);
    dc.append(
        "INBOX",
        &simple_mail("Ann <ann@customer.example>", "after@x", "After", ""),
        false,
    );
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(7));
    assert_eq!(wd.tickets().len(), 7, "one ticket each");
    let raw = wd.mailticket(&["show", "exact@x", "--raw"]).success();
    assert!(
        raw.stdout.as_bytes() == exact.as_slice(),
        "3 MiB byte for byte"
    );
    assert_eq!(layout(e, &wd, "exact@x"), "zstd-parts:1");
    let parts = layout(e, &wd, "huge@customer.example");
    let n: u32 = parts.strip_prefix("zstd-parts:").unwrap().parse().unwrap();
    assert!(n >= 6, "12 MB of random data in 1 MiB parts: {parts}");
    assert_eq!(
        layout(e, &wd, "after@x"),
        "zstd:0",
        "a small one is kept whole"
    );
    let shown = wd
        .mailticket(&["show", "huge@customer.example", "--json"])
        .success()
        .json();
    let att = &shown["messages"][0]["attachments"];
    assert_eq!(att.as_array().map(Vec::len), Some(1), "{att}");
    assert_eq!(att[0]["size"].as_u64(), Some(size), "{att}");
    assert_eq!(att[0]["sha256"].as_str(), Some(sha.as_str()), "{att}");
    let id = id_of(&shown).to_string();
    let raw = wd.mailticket(&["show", &id, "--raw"]).success();
    assert!(raw.stdout.as_bytes() == huge.as_slice(), "byte for byte");
    assert_summary(&wd.sync(), created(0));
    if let Engine::Sqlite = e {
        let left: Vec<_> = std::fs::read_dir(e.spool_dir(&wd))
            .unwrap()
            .filter_map(|f| f.unwrap().file_name().into_string().ok())
            .filter(|n| n.contains("spool"))
            .collect();
        assert!(left.is_empty(), "spool files left: {left:?}");
    }
}

fn a_sync_killed_while_spooling_stores_the_large_message_once_on_rerun(e: &Engine) {
    let dc = Dovecot::start();
    dc.seed(20, 0, 28);
    let (huge, _, _) = huge_mail("huge@customer.example", 12, 28);
    dc.append("INBOX", &huge, false);
    dc.seed(5, 0, 29);
    let wd = e.workdir();
    wd.write_config(&[dc.mailbox()]);
    let dir = e.spool_dir(&wd);
    let mut child = spawn(wd.cmd(&["sync"]));
    let pid = child.id();
    wait_until(Duration::from_secs(60), "a spool file", || {
        !spool_files(&dir, pid).is_empty()
    });
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert_eq!(spool_files(&dir, pid).len(), 1, "left behind by the kill");
    assert_eq!(
        e.scalar(
            &wd,
            "SELECT CAST(count(*) AS TEXT) FROM message WHERE message_id = 'huge@customer.example'"
        ),
        "0",
        "killed before its transaction"
    );
    wd.sync();
    assert!(spool_files(&dir, pid).is_empty(), "the leftover is swept");
    let ids = wd.ticketed_message_ids();
    assert_eq!(ids.len(), 26, "{ids:?}");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 26, "each message once");
    assert!(ids.iter().any(|i| i == "huge@customer.example"));
    assert!(layout(e, &wd, "huge@customer.example").starts_with("zstd-parts:"));
}
