//! Exactly once under `kill -9`: a sync killed at random moments, again and again, with
//! acknowledgements on, then run to the end, has ticketed every message exactly once and
//! delivered no acknowledgement twice.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::{Dovecot, Prng, Workdir, bare_id, spawn};
use crate::sink::Sink;

const KILLS: usize = 20;

#[test]
fn sync_killed_at_random_moments_loses_and_duplicates_nothing() {
    let dc = Dovecot::start();
    dc.seed(250, 50, 11);
    let on_server = message_ids(&dc);
    assert_eq!(on_server.len(), 300);
    let sink = Sink::start();
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&format!(
        "{base}\n{}\n[ack]\nenabled = true\nmax-age = 8640000000\n",
        sink.smtp_toml()
    ));

    let mut rng = Prng::new(0x5EED_C0DE);
    let mut killed_midway = 0;
    let mut progress = Vec::new();
    for _ in 0..KILLS {
        let mut child = spawn(wd.cmd(&["sync"]));
        std::thread::sleep(Duration::from_millis(rng.range(20, 400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // A kill before the store was made leaves none to read.
        let tickets = if wd.db().exists() {
            wd.tickets().len()
        } else {
            0
        };
        if status.signal() == Some(9) && tickets < 300 {
            killed_midway += 1;
        }
        // a finished run must have succeeded
        assert!(status.signal() == Some(9) || status.success(), "{status}");
        progress.push(tickets);
    }
    eprintln!("tickets after each kill: {progress:?}");
    assert!(
        killed_midway > 0,
        "no kill landed before the work was done: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "ticket count never goes back: {progress:?}"
    );

    wd.mailticket(&["sync", "--json"]).success();

    assert_eq!(wd.tickets().len(), 300);
    let ids = wd.ticketed_message_ids();
    assert_eq!(ids.len(), 300, "one message per ticket");
    let unique: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(unique.len(), 300, "no Message-ID twice");
    assert_eq!(unique, on_server, "exactly the messages on the server");
    assert_eq!(dc.unseen("INBOX"), 0, "every message is \\Seen");

    // Acknowledgements: never one delivered twice; every ticket's ack was sent, or is
    // reported as uncertain (a kill during its SMTP conversation), never resent blindly.
    let acked: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.header("In-Reply-To").expect("an ack has In-Reply-To"))
        .collect();
    let unique_acked: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(
        unique_acked.len(),
        acked.len(),
        "an acknowledgement went out twice"
    );
    let outbox = wd.mailticket(&["outbox", "--json"]).success().json();
    let rows = outbox.as_array().unwrap();
    let settled = rows
        .iter()
        .filter(|r| matches!(r["status"].as_str(), Some("sent" | "sending")))
        .count();
    assert_eq!(
        settled, 300,
        "one ack per ticket, sent or uncertain: {outbox}"
    );
    assert!(
        acked.len() >= 300 - (KILLS),
        "{} acks delivered",
        acked.len()
    );
}

/// Inbound Message-IDs in the store at `wd`, one entry per row, without angle brackets.
fn stored_ids(wd: &Workdir) -> Vec<String> {
    let c =
        rusqlite::Connection::open_with_flags(wd.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut s = c
        .prepare("SELECT message_id FROM message WHERE direction = 'in'")
        .unwrap();
    s.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|id| bare_id(&id.unwrap()))
        .collect()
}

/// How many inbound messages the store at `wd` holds (none before the store exists).
fn stored(wd: &Workdir) -> usize {
    let open =
        rusqlite::Connection::open_with_flags(wd.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY);
    let count =
        open.and_then(|c| c.query_row("SELECT count(*) FROM message", [], |r| r.get::<_, i64>(0)));
    count.map_or(0, |n| usize::try_from(n).unwrap())
}

/// How many times the server logged `support` in so far.
fn logins(dc: &Dovecot) -> usize {
    let log = std::fs::read_to_string(dc.dir.join("dovecot.log")).unwrap();
    log.matches("Login: user=<support>").count()
}

/// The Message-IDs of the server's INBOX.
fn message_ids(dc: &Dovecot) -> BTreeSet<String> {
    dc.messages("INBOX")
        .into_iter()
        .map(|m| m.message_id)
        .collect()
}

/// `wd`'s store holds every message of `on_server` once, and the server has them all seen.
fn assert_stored_once(dc: &Dovecot, wd: &Workdir, on_server: &BTreeSet<String>) {
    let ids = stored_ids(wd);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "a message stored twice");
    let missing: Vec<_> = on_server.difference(&unique).take(5).collect();
    let extra: Vec<_> = unique.difference(on_server).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "exactly the messages on the server: {} stored of {}; missing {missing:?}, \
         not on the server {extra:?}",
        unique.len(),
        on_server.len()
    );
    assert_eq!(dc.unseen("INBOX"), 0, "every message is \\Seen");
}

/// The second session's connection dies while it fetches: the first session fetches what
/// it left, and the run ends well, every message stored once.
#[test]
fn a_second_session_that_dies_mid_fetch_leaves_its_batch_to_the_first() {
    let dc = Dovecot::start();
    dc.seed(6000, 60, 13);
    let on_server = message_ids(&dc);
    let wd = Workdir::with(&[dc.mailbox()]);
    let before = logins(&dc);
    let child = wd
        .cmd(&["sync", "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::harness::wait_until(Duration::from_secs(30), "the second login", || {
        logins(&dc) == before + 2
    });
    // Its process, as the login line names it (`mpid=`), once it has selected the folder and
    // fetches (a debug build takes seconds over the batches of 6,060 messages): once it has
    // written a megabyte, which no answer but a fetch's comes near (a fixed pause after the
    // login sometimes ended it in its SELECT on a loaded machine).
    let log = std::fs::read_to_string(dc.dir.join("dovecot.log")).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("Login: user=<support>"))
        .unwrap();
    let pid = line
        .split("mpid=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let written = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("wchar: ")?.trim().parse().ok())
            .unwrap_or(0)
    };
    crate::harness::wait_until(
        Duration::from_secs(30),
        "the second session's fetch",
        || written() > 1 << 20,
    );
    let killed = std::process::Command::new("kill")
        .args(["-9", pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(
        stderr.contains("the second session failed; the first fetches the rest"),
        "{stderr}"
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["mailboxes"][0]["fetched"], 6060, "{run}");
    assert_stored_once(&dc, &wd, &on_server);
}

/// A pass logs in its second session ahead, while the first reads sizes, only when what
/// may be new is enough for one: a first run over a large folder of mail already read, a
/// run with nothing new, or with a little, log in once; a backlog that is, twice.
#[test]
fn a_second_session_is_opened_ahead_only_for_what_may_be_a_long_backlog() {
    let dc = Dovecot::start();
    dc.seed(2400, 0, 21);
    dc.add_seen("INBOX", "1:2350");
    let wd = Workdir::with(&[dc.mailbox()]);
    let sync = |fetched: u64, sessions: usize| {
        let before = logins(&dc);
        let out = wd.cmd(&["sync", "--json"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}\n{stderr}", out.status);
        let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(run["mailboxes"][0]["fetched"], fetched, "{run}");
        assert_eq!(
            run["mailboxes"][0]["errors"],
            serde_json::json!([]),
            "{run}"
        );
        // The one given up may still be logging in as the run ends: wait for its line.
        crate::harness::wait_until(Duration::from_secs(10), "the logins", || {
            logins(&dc) >= before + sessions
        });
        assert_eq!(logins(&dc), before + sessions, "{stderr}");
    };
    sync(50, 1);
    sync(0, 1);
    for i in 0..3 {
        let m = format!(
            "From: c{i}@example.org\r\nTo: support@example.com\r\nSubject: new {i}\r\n\
             Message-ID: <ahead-{i}@example.org>\r\n\r\nhello\r\n"
        );
        dc.append("INBOX", m.as_bytes(), false);
    }
    sync(3, 1);
    assert_eq!(dc.unseen("INBOX"), 0);
    // A first run (a new store) over a backlog long enough: two sessions.
    dc.doveadm(&[
        "flags", "remove", "-u", "support", "\\Seen", "mailbox", "INBOX", "all",
    ]);
    std::fs::remove_file(wd.dir.join("mailticket.db")).unwrap();
    sync(2403, 2);
}

/// A backlog of at least four batches is fetched over two sessions at once, their batches
/// interleaved: every message is stored exactly once and marked seen, in a run to the end
/// and in runs killed at random moments (the cursor and the post-actions move only past
/// what both sessions delivered).
#[test]
fn a_backlog_fetched_over_two_sessions_is_stored_exactly_once_even_when_killed() {
    let dc = Dovecot::start();
    dc.seed(1600, 60, 12);
    let on_server = message_ids(&dc);
    assert_eq!(on_server.len(), 1660);
    let stored_once = |wd: &Workdir| assert_stored_once(&dc, wd, &on_server);

    let whole = Workdir::with(&[dc.mailbox()]);
    let before = logins(&dc);
    let run = whole.sync();
    assert_eq!(run["mailboxes"][0]["fetched"], 1660, "{run}");
    assert_eq!(logins(&dc) - before, 2, "a second session fetched too");
    stored_once(&whole);

    // Three times over: all unseen again, a new store, a run killed once it has stored a
    // random number of messages (both sessions fetching by then), then a run to the end.
    let mut rng = Prng::new(0x2_5E55);
    let mut progress = Vec::new();
    for _ in 0..3 {
        dc.doveadm(&[
            "flags", "remove", "-u", "support", "\\Seen", "mailbox", "INBOX", "all",
        ]);
        let wd = Workdir::with(&[dc.mailbox()]);
        let target = usize::try_from(rng.range(400, 1400)).unwrap();
        let mut child = spawn(wd.cmd(&["sync"]));
        let started = std::time::Instant::now();
        while stored(&wd) < target && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(status.signal() == Some(9) || status.success(), "{status}");
        progress.push(stored(&wd));
        wd.mailticket(&["sync", "--json"]).success();
        stored_once(&wd);
    }
    eprintln!("messages stored when killed: {progress:?}");
    assert!(
        progress.iter().any(|&n| n > 0 && n < 1660),
        "no kill landed in the middle: {progress:?}"
    );
}
