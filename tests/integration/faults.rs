//! Faults on our side of the wire: a store whose disk fills up in the middle of a sync, and a
//! message whose References list is huge. After any of them, the next clean run stores every
//! message exactly once, and nothing was reported as stored that was not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Dovecot, Workdir, huge_mail, simple_mail, unique_dir};
use crate::sink::Sink;

/// A tmpfs of a fixed size, unmounted on drop (the tests run as root).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = unique_dir("mtfull");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Message-IDs of the inbound messages in the store at DB, one entry per row.
fn stored_ids(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut s = c
        .prepare("SELECT message_id FROM message WHERE direction = 'in'")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_full_disk_stops_the_run_and_the_next_run_stores_every_message_once() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    // Small and large messages interleaved: after a large one fails, smaller ones would
    // still fit into the space its rollback freed.
    for round in 0..6 {
        dc.seed(60, 2, 40 + round);
    }
    let on_server: BTreeSet<String> = dc
        .messages("INBOX")
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(on_server.len(), 372);

    let disk = SmallDisk::mount("2m");
    let db = disk.dir.join("mailticket.db");
    let wd = Workdir::new();
    let mailbox = dc.mailbox().toml();
    wd.write_raw_config(&format!(
        "[store]\npath = {:?}\n\n{mailbox}\n{}\n[ack]\nenabled = true\nmax-age = 8640000000\n",
        db.to_string_lossy(),
        sink.smtp_toml()
    ));

    let failed = wd.mailticket(&["-v", "sync", "--json"]).code(1);
    failed.stderr_mentions(&["full"]);
    assert!(
        !failed.stderr.contains("no transaction is active"),
        "the cause is named: {}",
        failed.stderr
    );
    let stored_after_failure = stored_ids(&db).len();
    assert!(
        stored_after_failure < on_server.len(),
        "the disk was big enough after all ({stored_after_failure} stored)"
    );
    // The log tells the truth: no message reported as created or threaded was rolled back.
    let reported = failed
        .stderr
        .lines()
        .filter(|l| l.contains(": created uid=") || l.contains(": threaded uid="))
        .count();
    assert!(
        reported <= stored_after_failure,
        "{reported} reported stored, {stored_after_failure} are: {}",
        failed.stderr
    );
    // The cursor never passed a message that was not stored.
    let cursor = count(&db, "SELECT last_uid FROM cursor");
    let stored: BTreeSet<String> = stored_ids(&db).into_iter().collect();
    let passed_over: Vec<u32> = dc
        .messages("INBOX")
        .into_iter()
        .filter(|m| i64::from(m.uid) <= cursor && !stored.contains(&m.message_id))
        .map(|m| m.uid)
        .collect();
    assert!(
        passed_over.is_empty(),
        "cursor {cursor} passed UIDs never stored: {passed_over:?}"
    );
    // Post-actions are recorded as finished only for what was stored: a later run that
    // stores the rest and is interrupted must still find their post-actions unfinished.
    let done = count(&db, "SELECT done_uid FROM cursor");
    assert!(
        done <= cursor,
        "done_uid {done} is past the cursor {cursor}"
    );

    disk.grow("64m");
    wd.mailticket(&["sync", "--json"]).success();
    let ids = stored_ids(&db);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a message was stored twice");
    assert_eq!(unique, on_server, "exactly the messages on the server");
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox WHERE kind = 'ack'"),
        count(
            &db,
            "SELECT count(DISTINCT ticket_id) FROM outbox WHERE kind = 'ack'"
        ),
        "one acknowledgement per ticket at most"
    );
    assert_eq!(dc.unseen("INBOX"), 0, "every message is \\Seen");
}

#[test]
fn a_disk_that_fills_while_a_large_message_is_spooled_fails_the_run_and_loses_nothing() {
    let dc = Dovecot::start();
    dc.seed(3, 0, 47);
    let (huge, _, _) = huge_mail("huge@customer.example", 12, 47);
    dc.append("INBOX", &huge, false);
    dc.append(
        "INBOX",
        &simple_mail("Ann <ann@customer.example>", "after@x", "After", ""),
        false,
    );
    let huge_uid = dc.messages("INBOX")[3].uid;
    // Room for the store, not for the 12 MB spool file beside it.
    let disk = SmallDisk::mount("6m");
    let db = disk.dir.join("mailticket.db");
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {:?}\n\n{}\n",
        db.to_string_lossy(),
        dc.mailbox().toml()
    ));
    let failed = wd.mailticket(&["sync", "--json"]).code(1);
    failed.stderr_mentions(&[".mailticket-spool-", "no space left"]);
    let spooled: Vec<_> = std::fs::read_dir(&disk.dir)
        .unwrap()
        .filter_map(|f| f.unwrap().file_name().into_string().ok())
        .filter(|n| n.contains("spool"))
        .collect();
    assert!(spooled.is_empty(), "removed after the error: {spooled:?}");
    assert_eq!(stored_ids(&db).len(), 3, "the messages before it");
    let cursor = count(&db, "SELECT last_uid FROM cursor");
    assert!(
        cursor < i64::from(huge_uid),
        "the cursor {cursor} passed it"
    );

    disk.grow("64m");
    wd.mailticket(&["sync", "--json"]).success();
    let ids = stored_ids(&db);
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(
        ids.iter().filter(|i| *i == "huge@customer.example").count(),
        1
    );
    assert_eq!(dc.unseen("INBOX"), 0, "every message is \\Seen");
}

#[test]
fn a_message_with_400000_references_is_threaded_quickly() {
    let dc = Dovecot::start();
    let wd = Workdir::with(&[dc.mailbox()]);
    dc.append(
        "INBOX",
        &simple_mail(
            "Anna <anna@customer.example>",
            "<root@customer.example>",
            "Printer",
            "",
        ),
        false,
    );
    wd.sync();
    let mut refs = String::from("References: <root@customer.example>");
    for i in 0..400_000 {
        refs.push_str(&format!("\r\n <r{i}.x@spam.example>"));
    }
    refs.push_str("\r\n");
    dc.append(
        "INBOX",
        &simple_mail(
            "Anna <anna@customer.example>",
            "<reply@customer.example>",
            "Re: Printer",
            &refs,
        ),
        false,
    );
    let t0 = std::time::Instant::now();
    let summary = wd.sync();
    let took = t0.elapsed();
    assert_eq!(summary["threaded"], 1, "{summary}");
    // Before the cap this took minutes (quadratic); a generous bound, not a benchmark.
    assert!(took.as_secs() < 30, "took {took:?}");
    let kept = count(&wd.db(), "SELECT count(*) FROM msgid_ref");
    assert!(kept <= 1000, "{kept} reference rows kept");
}
