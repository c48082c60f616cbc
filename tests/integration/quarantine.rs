//! `mailticket quarantine list|show|export|retry|delete` on a real store: a message the
//! parser could not take (random bytes from `ingest`), and messages kept by "an older
//! version" (rows written straight into the store) that parse now.

use serde_json::Value;

use crate::harness::{Prng, Workdir, simple_mail};

const ANNA: &str = "Anna <anna@customer.example>";

/// `mailticket --db … ARGS` (no config), expecting exit CODE.
fn mt(wd: &Workdir, args: &[&str], code: i32) -> crate::harness::Run {
    wd.mailticket_db(args, None).code(code)
}

fn list(wd: &Workdir) -> Vec<Value> {
    mt(wd, &["quarantine", "list", "--json"], 0)
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// Keeps RAW in the quarantine as an older mailticket would have; its id.
fn keep(wd: &Workdir, raw: &[u8], error: &str) -> i64 {
    let c = rusqlite::Connection::open(wd.db()).unwrap();
    c.execute(
        "INSERT INTO quarantine (source, uidvalidity, uid, error, sha256, size, raw, received_at)
         VALUES ('imap:support/INBOX', 7, 42, ?1, hex(randomblob(16)), ?2, ?3, 1700000000)",
        rusqlite::params![error, raw.len() as i64, raw],
    )
    .unwrap();
    c.last_insert_rowid()
}

#[test]
fn quarantined_mail_can_be_shown_exported_retried_and_deleted() {
    let wd = Workdir::new();
    let first = simple_mail(ANNA, "t1@customer.example", "Printer", "");
    wd.mailticket_db(&["ingest"], Some(&first)).success();
    let garbage = Prng::new(0xBAD).bytes(2048);
    wd.mailticket_db(&["ingest"], Some(&garbage)).success();
    let bad = list(&wd)[0]["id"].as_i64().unwrap();
    let order = simple_mail(
        "Bert <bert@customer.example>",
        "n1@customer.example",
        "Order",
        "",
    );
    let new = keep(&wd, &order, "an old parser bug");
    let reply = simple_mail(
        ANNA,
        "r1@customer.example",
        "Re: Printer",
        "In-Reply-To: <t1@customer.example>\r\n",
    );
    let reply = keep(&wd, &reply, "an old parser bug");
    let dup = keep(&wd, &first, "an old parser bug");
    assert_eq!(list(&wd).len(), 4);
    // `quarantine` alone lists too, as before.
    let table = mt(&wd, &["quarantine"], 0).stdout;
    assert!(table.contains("imap:support/INBOX"), "{table}");

    // show: the bytes exactly, or what we know of them
    let raw = wd.mailticket_db(&["quarantine", "show", &bad.to_string(), "--raw"], None);
    assert_eq!(raw.code, Some(0));
    let c = rusqlite::Connection::open(wd.db()).unwrap();
    let stored: Vec<u8> = c
        .query_row("SELECT raw FROM quarantine WHERE id = ?1", [bad], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, garbage);
    let raw = mt(&wd, &["quarantine", "show", &new.to_string(), "--raw"], 0);
    assert_eq!(raw.stdout.as_bytes(), order);
    let shown = mt(&wd, &["quarantine", "show", &new.to_string(), "--json"], 0).json();
    assert_eq!(shown["error"], "an old parser bug", "{shown}");
    assert_eq!(shown["header_only"], false, "{shown}");
    assert!(
        shown["header"].as_str().unwrap().contains("Subject: Order"),
        "{shown}"
    );
    let text = mt(&wd, &["quarantine", "show", &new.to_string()], 0).stdout;
    assert!(
        text.contains("an old parser bug") && text.contains("Subject: Order"),
        "{text}"
    );
    mt(&wd, &["quarantine", "show", "999"], 2);

    // export: byte for byte, never over an existing file
    let out = wd.path("bad.eml");
    let o = out.to_str().unwrap();
    mt(
        &wd,
        &["quarantine", "export", &bad.to_string(), "--output", o],
        0,
    );
    assert_eq!(std::fs::read(&out).unwrap(), garbage);
    mt(
        &wd,
        &["quarantine", "export", &bad.to_string(), "--output", o],
        2,
    );
    mt(&wd, &["quarantine", "export", "999"], 2);

    // retry one: it parses now, becomes a ticket and leaves the quarantine
    mt(&wd, &["quarantine", "retry"], 2);
    mt(&wd, &["quarantine", "retry", "999"], 2);
    let r = mt(&wd, &["quarantine", "retry", &new.to_string(), "--json"], 0).json();
    assert_eq!(
        (&r[0]["result"], &r[0]["ticket"]),
        (&"created".into(), &2.into()),
        "{r}"
    );
    assert_eq!(list(&wd).len(), 3);

    // retry all: threading and duplicates as for fresh mail; what still fails stays (exit 1)
    let r = mt(&wd, &["quarantine", "retry", "--all", "--json"], 1).json();
    let of = |id: i64| {
        r.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (of(reply)["result"].clone(), of(reply)["ticket"].clone()),
        ("threaded".into(), 1.into()),
        "{r}"
    );
    assert_eq!(of(dup)["result"], "duplicate", "{r}");
    assert_eq!(of(bad)["result"], "quarantined", "{r}");
    assert!(!of(bad)["error"].as_str().unwrap().is_empty(), "{r}");
    let left = list(&wd);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], bad);
    let t = mt(&wd, &["show", "1", "--json"], 0).json();
    assert_eq!(t["messages"].as_array().unwrap().len(), 2, "{t}");

    // delete: scriptable, but never without --yes
    let run = mt(&wd, &["quarantine", "delete", &bad.to_string()], 2);
    run.stderr_mentions(&["--yes"]);
    assert_eq!(list(&wd).len(), 1);
    mt(&wd, &["quarantine", "delete", &bad.to_string(), "--yes"], 0);
    assert!(list(&wd).is_empty());
    mt(&wd, &["quarantine", "delete", &bad.to_string(), "--yes"], 2);
}
