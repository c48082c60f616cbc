//! `mailticket watch` against a real Dovecot: IDLE latency, reconnects after a kick, an
//! outage and a hung server, a wrong password beside a good mailbox, polling without IDLE,
//! SIGTERM while idle and while storing, and the store lock (`sync` during `watch`, two
//! `sync`s at once). Timings are shortened through the `[watch]` table and `timeout`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::{Dovecot, Mailbox, Watcher, Workdir, quoted, simple_mail, spawn, wait_until};

/// The `[watch]` table of these tests: a poll interval far above any latency we accept.
fn timing(extra: &str) -> String {
    format!("[watch]\npoll-interval = 60\nbackoff-max = 2\nshutdown-timeout = 10\n{extra}")
}

const LONG: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(10);

fn mail(n: u32) -> Vec<u8> {
    simple_mail(
        &format!("Customer {n} <c{n}@example.net>"),
        &format!("watch-{n}@example.net"),
        &format!("Request {n}"),
        "",
    )
}

/// (tickets, messages over all tickets), from one `tickets --json`: cheap enough for
/// hundreds of messages, where [`ticketed_once`] runs `show` per ticket.
fn totals(wd: &Workdir) -> (usize, u64) {
    let t = wd.tickets();
    let messages = t.iter().map(|t| t["messages"].as_u64().unwrap()).sum();
    (t.len(), messages)
}

/// Every ticketed Message-ID, asserting that none is there twice.
fn ticketed_once(wd: &Workdir) -> BTreeSet<String> {
    let ids = wd.ticketed_message_ids();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a message was ticketed twice: {ids:?}"
    );
    unique
}

#[test]
fn idle_tickets_new_mail_at_once_and_sigterm_while_idle_exits_0() {
    let (dc, wd, mut w) = watching_seeded(3, 21);

    // sync during watch: refused with the documented status, nothing touched
    let run = wd.mailticket(&["sync"]).code(75);
    run.stderr_mentions(&["lock", "watch"]);

    let mut latencies = Vec::new();
    for n in 0..3 {
        let t0 = Instant::now();
        dc.append("INBOX", &mail(n), false);
        wait_until(LONG, "the new ticket", || {
            wd.ticket_count() == 4 + n as usize
        });
        latencies.push(t0.elapsed());
    }
    eprintln!("new mail -> ticket: {latencies:?}");
    // Dovecot pushes after ~0.5 s; the poll interval is 60 s.
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(5)),
        "{latencies:?}"
    );
    assert_eq!(w.count("polling"), 0, "IDLE must be used:\n{}", w.log());

    let took = w.stop(DEADLINE);
    eprintln!("SIGTERM while idle: exit after {took:?}");
    assert!(w.log().contains("stopped"), "{}", w.log());
    assert_eq!(ticketed_once(&wd).len(), 6);
    assert_eq!(dc.unseen("INBOX"), 0);
    // the lock went with the process
    wd.mailticket(&["sync"]).success();
}

#[test]
fn kicked_session_reconnects_and_loses_nothing() {
    let dc = Dovecot::start();
    let wd = Workdir::new();
    wd.write_config_with(&[dc.mailbox()], &timing(""));
    let w = wd.watch(&[]);
    w.wait_log("connected", 1, LONG);
    for round in 0..2 {
        dc.kick("support");
        dc.append("INBOX", &mail(10 + round), false);
        dc.append("INBOX", &mail(20 + round), false);
        wait_until(LONG, "tickets after the kick", || {
            wd.ticket_count() == 2 * (round as usize + 1)
        });
    }
    w.wait_log("connected", 3, LONG);
    assert!(w.count("server said BYE") >= 2, "{}", w.log());
    assert_eq!(ticketed_once(&wd).len(), 4);
}

#[test]
fn server_outage_reconnects_with_backoff_exactly_once() {
    let (dc, wd, mut w) = watching_seeded(2, 31);

    // mail that arrives just as the server goes down, and after it is back
    dc.append("INBOX", &mail(30), false);
    let sessions = dc.pids("support");
    dc.stop_server();
    // `imap-server stop` leaves running sessions alone; a dying server does not
    for p in sessions {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    std::thread::sleep(Duration::from_secs(6));
    let attempts = w.count("disconnected; reconnecting");
    assert!(
        attempts >= 3,
        "expected several backed-off attempts:\n{}",
        w.log()
    );
    dc.restart();
    dc.append("INBOX", &mail(31), false);
    wait_until(LONG, "every message ticketed", || wd.ticket_count() >= 4);
    std::thread::sleep(Duration::from_secs(1));
    let ids = ticketed_once(&wd);
    let on_server: BTreeSet<String> = dc
        .messages("INBOX")
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids, on_server);
    w.stop(DEADLINE);
}

#[test]
fn hung_server_times_out_and_the_watch_reconnects() {
    let dc = Dovecot::start();
    let wd = Workdir::new();
    let mb = dc.mailbox();
    let text = mb.toml() + "timeout = 2\n";
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{text}\n{}",
        quoted(&wd.db().to_string_lossy()),
        timing("idle-interval = 3\n")
    ));
    let mut w = wd.watch(&[]);
    w.wait_log("connected", 1, LONG);
    wait_until(LONG, "an imap process", || !dc.pids("support").is_empty());
    let pids = dc.pids("support");
    for p in &pids {
        assert!(
            std::process::Command::new("kill")
                .args(["-STOP", &p.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
    dc.append("INBOX", &mail(40), false);
    // renewal after <= 3 s, DONE times out after 2 s, reconnect on a fresh process
    let got = std::panic::catch_unwind(|| {
        wait_until(LONG, "the ticket via a new session", || {
            wd.ticket_count() == 1
        })
    });
    for p in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &p.to_string()])
            .status();
    }
    got.unwrap();
    assert!(w.count("timed out") >= 1, "{}", w.log());
    assert!(w.count("connected") >= 2, "{}", w.log());
    w.stop(DEADLINE);
}

#[test]
fn wrong_password_waits_the_cap_and_other_mailboxes_work() {
    let dc = Dovecot::start_with(&[("IMAP_AUTH_PENALTY", "0")]);
    let bad = Mailbox {
        password: quoted("not-the-password"),
        ..dc.mailbox_of("alice")
    };
    let wd = Workdir::new();
    wd.write_config_with(
        &[bad, dc.mailbox()],
        "[watch]\npoll-interval = 60\nbackoff-max = 120\n",
    );
    let mut w = wd.watch(&[]);
    w.wait_log("LOGIN REFUSED", 1, LONG);
    dc.append("INBOX", &mail(50), false);
    wait_until(LONG, "support's ticket", || wd.ticket_count() == 1);
    std::thread::sleep(Duration::from_secs(2));
    // at the cap (60..120 s), so no second attempt yet
    assert_eq!(w.count("LOGIN REFUSED"), 1, "{}", w.log());
    assert!(
        w.log().contains("authentication failed for alice"),
        "{}",
        w.log()
    );
    let took = w.stop(DEADLINE);
    assert!(
        took < Duration::from_secs(3),
        "a backoff wait must not delay shutdown: {took:?}"
    );
}

#[test]
fn server_without_idle_is_polled() {
    let caps = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE SORT THREAD=REFERENCES \
                MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 \
                CONDSTORE ESEARCH SEARCHRES WITHIN MOVE SPECIAL-USE";
    let dc = Dovecot::start_with(&[("IMAP_CAPABILITY", caps)]);
    let wd = Workdir::new();
    wd.write_config_with(&[dc.mailbox()], "[watch]\npoll-interval = 1\n");
    let mut w = wd.watch(&[]);
    w.wait_log("polling (IDLE not offered by the server)", 1, LONG);
    for n in 0..2 {
        dc.append("INBOX", &mail(60 + n), false);
        wait_until(Duration::from_secs(10), "a polled ticket", || {
            wd.ticket_count() == n as usize + 1
        });
    }
    assert_eq!(w.count("idling"), 0);
    w.stop(DEADLINE);
}

#[test]
fn sigterm_while_storing_large_messages_exits_0_and_leaves_nothing_half_written() {
    let dc = Dovecot::start();
    dc.seed(200, 60, 71);
    let wd = Workdir::new();
    wd.write_config_with(&[dc.mailbox()], &timing(""));
    let mut w = wd.watch(&[]);
    w.wait_log("created", 1, LONG);
    let took = w.stop(DEADLINE);
    let stored = wd.ticket_count();
    eprintln!("SIGTERM mid-catch-up: exit after {took:?}, {stored} of 260 stored");
    assert!(w.log().contains("stopped"), "{}", w.log());
    // every stored ticket has its one message, and a sync finishes the rest exactly once
    assert_eq!(totals(&wd), (stored, stored as u64));
    let summary = wd.sync();
    assert_eq!(
        summary["created"].as_u64(),
        Some(260 - stored as u64),
        "{summary}"
    );
    assert_eq!(summary["duplicates"].as_u64(), Some(0), "{summary}");
    assert_eq!(totals(&wd), (260, 260));
    assert_eq!(dc.unseen("INBOX"), 0);
}

#[test]
fn two_concurrent_syncs_one_works_and_one_reports_the_lock() {
    let dc = Dovecot::start();
    dc.seed(600, 20, 81);
    let wd = Workdir::with(&[dc.mailbox()]);
    let lock = wd.path("mailticket.db.lock");
    let mut first = spawn(wd.cmd(&["sync"]));
    let pid = first.id();
    wait_until(LONG, "the first sync's lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&format!("pid {pid} (sync)")))
    });
    let second = wd.mailticket(&["sync"]).code(75);
    second.stderr_mentions(&["lock", &format!("pid {pid}")]);
    assert!(first.wait().unwrap().success());
    assert_eq!(totals(&wd), (620, 620));
    assert_eq!(dc.unseen("INBOX"), 0);
}

/// A Dovecot seeded with N messages and a watch that has ticketed them.
fn watching_seeded(n: u32, seed: u32) -> (Dovecot, Workdir, Watcher) {
    let dc = Dovecot::start();
    dc.seed(n, 0, seed);
    let wd = Workdir::new();
    wd.write_config_with(&[dc.mailbox()], &timing(""));
    let w = wd.watch(&[]);
    w.wait_log("connected", 1, LONG);
    wait_until(LONG, "the catch-up", || wd.ticket_count() == n as usize);
    (dc, wd, w)
}
