//! Secrets stay secret at any log level, and a secret command that hangs does not hang the run.

use std::time::{Duration, Instant};

use crate::harness::{Dovecot, Workdir, quoted, simple_mail};

#[test]
fn no_log_directive_lifts_the_cap_on_the_imap_wire_log() {
    let dc = Dovecot::start();
    dc.append(
        "INBOX",
        &simple_mail("Anna <anna@customer.example>", "p1@x", "Hello", ""),
        false,
    );
    // The support user's password is "support-pass".
    let wd = Workdir::with(&[dc.mailbox()]);
    for directive in [
        "trace",
        "async_imap=trace",
        "async_imap::imap_stream=trace",
        "imap_proto=trace",
        "trace,async_imap::imap_stream[]=trace",
        "async_imap::imap_stream=trace,async_imap=trace,mailticket=trace",
    ] {
        let mut cmd = wd.cmd(&["-vv", "sync", "--dry-run", "--json"]);
        cmd.env("MAILTICKET_LOG", format!("{directive},mailticket=trace"));
        let run = crate::harness::run(cmd, None).success();
        assert!(
            run.stderr.lines().count() > 5,
            "{directive}: trace logging is on: {run:?}"
        );
        assert!(
            !run.stderr.contains("support-pass") && !run.stdout.contains("support-pass"),
            "{directive}: the password reached the log: {run:?}"
        );
    }
}

#[test]
fn a_password_command_that_hangs_fails_the_run_within_the_timeout() {
    let dc = Dovecot::start();
    let mut mb = dc.mailbox();
    mb.password = r#"{ command = ["sleep", "1000"] }"#.into();
    let wd = Workdir::new();
    let mut text = format!("[store]\npath = {}\n\n", quoted(&wd.db().to_string_lossy()));
    text += &mb.toml();
    text += "timeout = 2\n";
    wd.write_raw_config(&text);
    let start = Instant::now();
    let run = wd.mailticket(&["sync"]);
    let took = start.elapsed();
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {run:?}");
    run.stderr_mentions(&[
        "mailbox support password",
        "sleep",
        "did not finish within 2 s",
    ]);
}
