//! What a run prints for people: the progress line (on a terminal only), per-message lines
//! at debug, `--dry-run` marked everywhere, and SMTP failures counted in the table.

use crate::harness::{Dovecot, Workdir, run, simple_mail};
use crate::sink::Sink;

/// More messages than a run needs to get a progress line.
const LONG: u32 = 150;

#[test]
fn a_long_first_sync_draws_a_progress_line_on_a_terminal_only() {
    let dc = Dovecot::start();
    dc.seed(LONG, 0, 41);
    let wd = Workdir::with(&[dc.mailbox()]);

    // A dry run first (it leaves the server and the store as they are): stderr is a pipe
    let out = wd.mailticket(&["sync", "--dry-run"]).success();
    assert!(
        !out.stderr.contains('\r'),
        "a progress line off a terminal: {out:?}"
    );
    assert!(out.stdout.starts_with("DRY RUN"), "{out:?}");
    // per-message lines are debug: a long run does not log one INFO line per message
    assert!(
        out.stderr.lines().count() < 10,
        "a line per message at info: {out:?}"
    );

    // The same on a terminal (script(1) gives the command a pseudo-terminal): the line
    // is drawn with \r and counts the messages
    let mut cmd = std::process::Command::new("script");
    let line = format!(
        "{} --config {} sync --dry-run",
        env!("CARGO_BIN_EXE_mailticket"),
        wd.config().display()
    );
    cmd.args(["-qefc", &line, "/dev/null"])
        .current_dir(&wd.dir)
        .env("NO_COLOR", "1");
    let tty = run(cmd, None).success();
    assert!(
        tty.stdout.contains("\rsync: ") && tty.stdout.contains(&format!("/{LONG} messages")),
        "no progress line on a terminal: {tty:?}"
    );
    // a log line never lands on the progress line: it wipes it first
    for l in tty.stdout.split('\n') {
        let visible = l.rsplit('\r').next().unwrap_or_default();
        assert!(
            !(visible.contains("INFO") && visible.contains("messages (")),
            "a log line shares the progress line: {visible:?}"
        );
    }
    assert!(tty.stdout.contains("INFO"), "{tty:?}");
    // -q: none there either
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qefc", &format!("{line} -q"), "/dev/null"])
        .current_dir(&wd.dir);
    let quiet = run(cmd, None).success();
    assert!(!quiet.stdout.contains("\rsync: "), "{quiet:?}");

    // The real run: off a terminal, no \r; -v shows each message
    let out = wd.mailticket(&["sync", "-v"]).success();
    assert!(!out.stderr.contains('\r'), "{out:?}");
    assert!(out.stderr.matches(" created ").count() >= 1, "{out:?}");
    assert_eq!(wd.ticket_count(), LONG as usize);
}

#[test]
fn a_dry_run_is_marked_in_the_json_and_the_logs() {
    let dc = Dovecot::start();
    dc.append(
        "INBOX",
        &simple_mail(
            "A <a@customer.example>",
            "dry-1@customer.example",
            "Hello",
            "",
        ),
        false,
    );
    let wd = Workdir::with(&[dc.mailbox()]);
    let out = wd
        .mailticket(&["sync", "--dry-run", "--json", "-v"])
        .success();
    let v = out.json();
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["created"], 1, "{v}");
    out.stderr_mentions(&["would create", "dry run (nothing kept)"]);
    let real = wd.sync();
    assert_eq!(real["dry_run"], false, "{real}");
    assert_eq!(real["created"], 1, "the dry run kept something: {real}");
}

#[test]
fn the_table_counts_the_smtp_failures_the_run_exits_1_for() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&format!(
        "{base}\n{}\n[ack]\nenabled = true\nmax-age = 8640000000\n",
        sink.smtp_toml()
    ));
    for (n, who) in ["reject", "anna"].iter().enumerate() {
        let from = format!("X <{who}@customer.example>");
        let mail = simple_mail(&from, &format!("t{n}@customer.example"), "Hi", "");
        dc.append("INBOX", &mail, false);
    }
    let out = wd.mailticket(&["sync"]).code(1);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("outbox"))
        .unwrap_or_else(|| panic!("no outbox row: {out:?}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["outbox:", "1", "sent"], "{row}");
    assert_eq!(
        cells.last(),
        Some(&"1"),
        "the refusal is not counted: {row}"
    );
}
