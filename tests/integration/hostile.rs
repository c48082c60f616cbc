//! `mailticket sync` against servers that lie, flood or break (`tests/env/hostile-imap`), and
//! against a real Dovecot holding a message larger than `max-message-size`: no mail is lost,
//! the cursor is never pinned, a run always ends within its timeouts, and memory stays bounded.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Counts, Dovecot, HostileImap, Mailbox, Workdir, assert_summary, created, python_code, run,
    simple_mail,
};

/// Peak RSS a sync may reach whatever the server sends.
const MAX_RSS_KB: u64 = 200 * 1024;
/// The per-operation timeout the hostile tests configure.
const TIMEOUT_SECS: u64 = 5;

/// `[[mailbox]]` MB with `timeout` and EXTRA lines (more keys of that table).
fn config_with(wd: &Workdir, mb: &Mailbox, extra: &str) {
    let text = format!(
        "[store]\npath = {db:?}\n\n{mb}timeout = {TIMEOUT_SECS}\n{extra}",
        db = wd.db().to_string_lossy(),
        mb = mb.toml()
    );
    wd.write_raw_config(&text);
}

/// How a measured run went.
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
    rss_kb: u64,
    killed: bool,
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail: String = self.stderr.chars().take(4000).collect();
        write!(
            f,
            "exit {:?} after {:.1} s (killed: {}), peak RSS {} KiB\n--- stdout:\n{}\n--- stderr \
             ({} bytes, first 4000 chars):\n{tail}",
            self.code,
            self.secs,
            self.killed,
            self.rss_kb,
            self.stdout,
            self.stderr.len()
        )
    }
}

/// Runs `mailticket ARGS` in WD under a python3 parent that kills it after LIMIT and reports
/// its peak RSS (`ru_maxrss` of the waited-for child) and how long it ran.
fn measured(wd: &Workdir, args: &[&str], limit: Duration) -> Measured {
    const CODE: &str = "import json, resource, subprocess, sys, time\n\
        t = time.monotonic()\n\
        p = subprocess.Popen(sys.argv[3:])\n\
        killed = False\n\
        try:\n\
        \x20   code = p.wait(timeout=float(sys.argv[2]))\n\
        except subprocess.TimeoutExpired:\n\
        \x20   p.kill(); code = p.wait(); killed = True\n\
        r = {'code': code, 'secs': time.monotonic() - t, 'killed': killed,\n\
        \x20    'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n\
        json.dump(r, open(sys.argv[1], 'w'))\n";
    let inner = wd.cmd(args);
    let report = wd.path("measured.json");
    let mut cmd = std::process::Command::new("python3");
    cmd.current_dir(&wd.dir)
        .arg("-c")
        .arg(CODE)
        .arg(&report)
        .arg(limit.as_secs().to_string())
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = run(cmd, None);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    Measured {
        code: r["code"].as_i64().and_then(|c| i32::try_from(c).ok()),
        stdout: out.stdout,
        stderr: out.stderr,
        secs: r["secs"].as_f64().unwrap(),
        rss_kb: r["rss_kb"].as_u64().unwrap(),
        killed: r["killed"].as_bool().unwrap(),
    }
}

/// Asserts that M failed on its own (exit 1, not killed) in reasonable time and memory, with
/// an error that names the host and every one of NEEDLES, short and free of raw buffers.
fn assert_gave_up(m: &Measured, needles: &[&str]) {
    assert!(!m.killed, "the run had to be killed: {m:?}");
    assert_eq!(m.code, Some(1), "{m:?}");
    assert!(m.rss_kb < MAX_RSS_KB, "peak RSS over 200 MB: {m:?}");
    // A generous bound: a few operation timeouts, far below "for ever".
    assert!(m.secs < 60.0, "took too long to give up: {m:?}");
    let err = m.stderr.to_lowercase();
    assert!(err.contains("127.0.0.1"), "the error names the host: {m:?}");
    for n in needles {
        assert!(err.contains(&n.to_lowercase()), "stderr lacks {n:?}: {m:?}");
    }
    assert!(m.stderr.len() < 8000, "stderr is not short: {m:?}");
    assert!(!m.stderr.contains("[255, 254"), "bytes as an array: {m:?}");
    eprintln!(
        "gave up after {:.1} s, peak RSS {} KiB: {}",
        m.secs,
        m.rss_kb,
        m.stderr
            .lines()
            .find(|l| l.contains("mailbox failed"))
            .unwrap_or_default()
    );
}

/// A hostile server in MODE with three messages, and a work directory syncing it.
fn hostile(mode: &str) -> (HostileImap, Workdir) {
    let server = HostileImap::start(mode, &["--flood-secs", "60"]);
    let wd = Workdir::new();
    config_with(&wd, &server.mailbox(), "");
    (server, wd)
}

fn sync_measured(wd: &Workdir) -> Measured {
    measured(wd, &["sync", "--json"], Duration::from_secs(100))
}

fn subjects(wd: &Workdir) -> Vec<String> {
    let mut s: Vec<String> = wd
        .tickets()
        .iter()
        .map(|t| t["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    s.sort();
    s
}

fn later_mail(n: u32) -> Vec<u8> {
    simple_mail(
        &format!("late{n}@example.org"),
        &format!("<late-{n}@example.org>"),
        &format!("Later message {n}"),
        "",
    )
}

/// A plain 3 MiB message, "Big one" from big@example.org.
fn big_mail() -> Vec<u8> {
    let mut big = simple_mail("big@example.org", "<big@example.org>", "Big one", "");
    let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456\r\n";
    while big.len() < 3 << 20 {
        big.extend_from_slice(line);
    }
    big
}

#[test]
fn a_message_over_max_message_size_is_quarantined_and_the_mail_after_it_is_ticketed() {
    let dc = Dovecot::start();
    let small = |n: u32| {
        simple_mail(
            "c@example.org",
            &format!("<small-{n}@example.org>"),
            &format!("Small {n}"),
            "",
        )
    };
    dc.append("INBOX", &small(1), false);
    let big = big_mail();
    dc.append("INBOX", &big, false);
    dc.append("INBOX", &small(2), false);
    let wd = Workdir::new();
    config_with(&wd, &dc.mailbox(), "max-message-size = \"1 MB\"\n");

    let m = sync_measured(&wd);
    assert_eq!(m.code, Some(0), "{m:?}");
    assert!(m.rss_kb < MAX_RSS_KB, "{m:?}");
    let summary: Value = serde_json::from_str(&m.stdout).unwrap();
    assert_summary(
        &summary,
        Counts {
            fetched: 3,
            created: 2,
            quarantined: 1,
            ..Counts::default()
        },
    );
    assert_eq!(subjects(&wd), ["Small 1", "Small 2"]);
    let q = wd.mailticket(&["quarantine", "--json"]).success().json();
    let rows = q.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{q}");
    assert_eq!(rows[0]["uid"], 2, "{q}");
    assert_eq!(rows[0]["size"].as_u64(), Some(big.len() as u64), "{q}");
    let error = rows[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("too large"), "{q}");
    assert_eq!(dc.unseen("INBOX"), 0, "the post-action ran on all three");

    // The next run neither fetches it again nor stops at it.
    dc.append("INBOX", &small(3), false);
    assert_summary(&wd.sync(), created(1));
}

/// A hostile server in MODE whose UID 4 is a 3 MiB message (fetched in parts through the
/// spool) between the three generated ones and a later one (UID 5).
fn hostile_with_a_large_message(mode: &str) -> (HostileImap, Workdir) {
    let server = HostileImap::start(mode, &["--flood-secs", "60", "--target-uid", "4"]);
    let big = big_mail();
    server.deliver("a", &big, false);
    server.deliver("b", &later_mail(1), false);
    let wd = Workdir::new();
    config_with(&wd, &server.mailbox(), "");
    (server, wd)
}

/// The cursor of the one mailbox of `wd`'s store.
fn last_uid(wd: &Workdir) -> i64 {
    rusqlite::Connection::open(wd.db())
        .unwrap()
        .query_row("SELECT last_uid FROM cursor", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_large_message_expunged_between_its_parts_is_passed_like_any_gone_uid() {
    let (_server, wd) = hostile_with_a_large_message("parts-gone");
    assert_summary(&wd.sync(), created(4));
    assert!(!subjects(&wd).contains(&"Big one".to_owned()));
    assert_eq!(last_uid(&wd), 5);
}

#[test]
fn a_large_message_left_out_of_a_part_fails_the_run_before_the_cursor_passes_it() {
    let (_server, wd) = hostile_with_a_large_message("parts-omitted");
    let failed = wd.mailticket(&["sync", "--json"]).code(1);
    failed.stderr_mentions(&["127.0.0.1", "leaves uid 4 out"]);
    assert_eq!(subjects(&wd).len(), 3, "the messages before it");
    assert_eq!(last_uid(&wd), 3);
}

#[test]
fn a_large_message_left_out_of_a_part_once_is_fetched_again() {
    let (_server, wd) = hostile_with_a_large_message("parts-omitted-once");
    assert_summary(&wd.sync(), created(5));
    assert!(subjects(&wd).contains(&"Big one".to_owned()));
    let raw = wd
        .mailticket(&["show", "big@example.org", "--raw"])
        .success();
    assert!(
        raw.stdout.as_bytes() == big_mail().as_slice(),
        "byte for byte"
    );
}

#[test]
fn parts_that_never_end_are_stopped_past_the_announced_size() {
    let (_server, wd) = hostile_with_a_large_message("parts-endless");
    assert_gave_up(&sync_measured(&wd), &["more of uid 4 than asked"]);
}

#[test]
fn a_uid_left_out_of_a_fetch_once_is_fetched_again() {
    let (_server, wd) = hostile("omit-once");
    let m = sync_measured(&wd);
    assert_eq!(m.code, Some(0), "{m:?}");
    let summary: Value = serde_json::from_str(&m.stdout).unwrap();
    assert_summary(&summary, created(3));
}

#[test]
fn a_uid_always_left_out_fails_the_run_and_the_cursor_stays_before_it() {
    let (server, wd) = hostile("omit-always");
    let m = sync_measured(&wd);
    assert_eq!(m.code, Some(1), "{m:?}");
    let err = m.stderr.to_lowercase();
    assert!(err.contains("127.0.0.1") && err.contains("uid 2"), "{m:?}");
    drop(server);

    // The same mailbox (same UIDVALIDITY and UIDs), now served honestly: UID 2 is taken.
    let honest = HostileImap::start("none", &[]);
    config_with(&wd, &honest.mailbox(), "");
    wd.mailticket(&["sync", "--json"]).success();
    assert_eq!(
        subjects(&wd),
        [
            "Hostile test message 1",
            "Hostile test message 2",
            "Hostile test message 3"
        ]
    );
}

#[test]
fn uidnext_4294967295_on_the_first_run_does_not_hide_later_mail() {
    let (server, wd) = hostile("uidnext-max");
    assert_summary(&wd.sync(), created(3));
    // Someone reads the new mail in Outlook before the next poll.
    server.deliver("a", &later_mail(1), true);
    assert_summary(&wd.sync(), created(1));
    server.deliver("b", &later_mail(2), true);
    assert_summary(&wd.sync(), created(1));
}

#[test]
fn a_bogus_uid_4294967295_in_a_fetch_answer_does_not_pin_the_cursor() {
    let (server, wd) = hostile("bogus-uid");
    assert_summary(&wd.sync(), created(3));
    server.deliver("a", &later_mail(1), false);
    assert_summary(&wd.sync(), created(1));
    assert_eq!(wd.tickets().len(), 4, "the bogus message is not a ticket");
}

#[test]
fn an_endless_stream_of_flag_updates_ends_the_fetch() {
    let (_server, wd) = hostile("flags-flood");
    assert_gave_up(&sync_measured(&wd), &["fetching messages"]);
}

#[test]
fn flag_updates_dripping_in_one_a_second_end_the_fetch_at_its_deadline() {
    let (_server, wd) = hostile("flags-drip");
    let m = sync_measured(&wd);
    assert_gave_up(
        &m,
        &["fetching messages", "did not end in the time allowed"],
    );
    // The deadline of a three-message FETCH: about twice the timeout.
    assert!(m.secs < 6.0 * TIMEOUT_SECS as f64, "{m:?}");
}

#[test]
fn a_message_resent_endlessly_ends_the_fetch() {
    let (_server, wd) = hostile("resend");
    assert_gave_up(&sync_measured(&wd), &["fetching messages"]);
}

#[test]
fn endless_size_answers_end_the_size_fetch() {
    let (_server, wd) = hostile("size-flood");
    assert_gave_up(&sync_measured(&wd), &["fetching sizes"]);
}

#[test]
fn a_536_mb_literal_is_refused_before_it_is_read() {
    let (_server, wd) = hostile("huge-literal");
    let m = sync_measured(&wd);
    assert_gave_up(&m, &["fetching messages", "536870000"]);
    assert!(
        m.secs < f64::from(u32::try_from(TIMEOUT_SECS).unwrap()),
        "{m:?}"
    );
}

#[test]
fn unsolicited_40_mb_list_literals_do_not_grow_memory() {
    let (_server, wd) = hostile("list-flood");
    assert_gave_up(&sync_measured(&wd), &["fetching messages"]);
}

#[test]
fn a_syntax_error_after_a_100_mb_literal_is_refused_and_not_logged() {
    let (_server, wd) = hostile("syntax-literal");
    let m = sync_measured(&wd);
    assert_gave_up(&m, &["fetching messages"]);
    assert!(
        !m.stderr.contains("From: x"),
        "the literal was printed: {m:?}"
    );
}

#[test]
fn invalid_utf8_from_the_server_is_shown_as_text() {
    let (_server, wd) = hostile("garbage");
    let m = sync_measured(&wd);
    assert_gave_up(&m, &["fetching messages", "not imap"]);
    // No byte arrays, such as `[42, 32, 49, ...]`, anywhere.
    let digits_list = m
        .stderr
        .as_bytes()
        .windows(6)
        .any(|w| w[0] == b'[' && w[1].is_ascii_digit() && w.contains(&b','));
    assert!(!digits_list, "{m:?}");
}

#[test]
fn a_connection_closed_mid_fetch_is_reported_as_such_and_loses_nothing() {
    let (_server, wd) = hostile("eof");
    let m = sync_measured(&wd);
    assert_gave_up(&m, &["closed the connection", "fetching messages"]);
    assert!(!m.stderr.to_lowercase().contains("broken pipe"), "{m:?}");
    // The first message was stored before the connection went; the next (clean) run on the
    // same server takes the other two, and each message is there once.
    assert_summary(&wd.sync(), created(2));
    assert_eq!(wd.tickets().len(), 3);
}

#[test]
fn a_connection_closed_after_a_fetch_is_reported_as_such_not_as_a_broken_pipe() {
    let (_server, wd) = hostile("eof-after-fetch");
    let m = sync_measured(&wd);
    assert_gave_up(&m, &["closed the connection", "storing flags"]);
    assert!(!m.stderr.to_lowercase().contains("broken pipe"), "{m:?}");
    // Stored before the connection went: the next run only finishes the post-action.
    assert_summary(&wd.sync(), Counts::default());
    assert_eq!(wd.tickets().len(), 3);
}

/// The python3 above reads `ru_maxrss` in KiB on Linux: check the unit once.
#[test]
fn rss_is_measured_in_kib() {
    let out = python_code(
        "import resource, subprocess\n\
         subprocess.run(['python3', '-c', 'b = bytearray(64 << 20)'])\n\
         print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
        &[],
    );
    let kib: u64 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert!((64 * 1024..1024 * 1024).contains(&kib), "{kib}");
}
