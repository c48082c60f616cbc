//! Acknowledgements and replies through a real SMTP server (tests/env/smtp-sink) on loopback,
//! with the messages coming in over a real Dovecot.

use crate::harness::{Dovecot, Workdir, id_of, simple_mail};
use crate::sink::Sink;

/// A work directory whose config has DC's support mailbox, SINK as `[smtp]` and acks on,
/// plus EXTRA lines in `[ack]`.
fn setup(dc: &Dovecot, sink: &Sink, ack_extra: &str) -> Workdir {
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&format!(
        "{base}\n{}\n[ack]\nenabled = true\nmax-age = 8640000000\n{ack_extra}",
        sink.smtp_toml()
    ));
    wd
}

/// Appends a plain message from Anna (unseen) with Message-ID ID, SUBJECT and EXTRA headers.
fn from_anna(dc: &Dovecot, id: &str, subject: &str, extra: &str) {
    let mail = simple_mail("Anna <anna@customer.example>", id, subject, extra);
    dc.append("INBOX", &mail, false);
}

fn outbox(wd: &Workdir) -> Vec<serde_json::Value> {
    wd.mailticket(&["outbox", "--json"])
        .success()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_new_human_request_gets_one_threaded_acknowledgement() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(
        &dc,
        &sink,
        "subject = \"[{{ ticket.id }}] {{ ticket.subject }} for {{ customer.email }}\"\n",
    );
    from_anna(
        &dc,
        "req1@customer.example",
        "Printer broken",
        "References: <older@customer.example>\r\n",
    );
    let s = wd.sync();
    assert_eq!(s["created"], 1);
    assert_eq!(s["acks_queued"], 1);
    assert_eq!(s["outbox"]["sent"], 1, "{s}");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.envelope["rcpt_tos"][0], "anna@customer.example");
    assert_eq!(m.envelope["tls"], "TLSv1.3");
    assert_eq!(m.envelope["auth_user"], "support");
    assert_eq!(
        m.header("Subject").unwrap(),
        "[1] Printer broken for anna@customer.example"
    );
    assert_eq!(m.header("In-Reply-To").unwrap(), "<req1@customer.example>");
    assert_eq!(
        m.header("References").unwrap(),
        "<older@customer.example> <req1@customer.example>"
    );
    assert_eq!(m.header("Auto-Submitted").unwrap(), "auto-replied");
    assert_eq!(m.header("X-Auto-Response-Suppress").unwrap(), "All");
    assert!(m.header("To").unwrap().contains("anna@customer.example"));
    let id = m.header("Message-ID").unwrap();
    assert!(
        id.starts_with("<mt.1.") && id.ends_with("@example.com>"),
        "{id}"
    );
    // The acknowledgement is recorded on the ticket, under the id it was sent with.
    let t = wd.show(1);
    let out: Vec<_> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "out")
        .collect();
    assert_eq!(out.len(), 1);
    assert_eq!(format!("<{}>", out[0]["message_id"].as_str().unwrap()), id);
    // A second run sends nothing again.
    let s = wd.sync();
    assert_eq!(s["outbox"]["sent"], 0);
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn machines_ourselves_and_no_reply_senders_get_no_acknowledgement() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    let cases: &[(&str, &str, &str)] = &[
        (
            "Carla <carla@partner.example>",
            "Automatic reply: hello",
            "Auto-Submitted: auto-replied\r\n",
        ),
        (
            "Dave <dave@partner.example>",
            "Out of Office: hello",
            "X-MS-Exchange-Inbox-Rules-Loop: dave@partner.example\r\nX-Auto-Response-Suppress: All\r\n",
        ),
        (
            "List <list@lists.example>",
            "[list] digest",
            "List-Id: <users.lists.example>\r\nPrecedence: list\r\n",
        ),
        (
            "MAILER-DAEMON <mailer-daemon@mx.example>",
            "Undelivered Mail",
            "Return-Path: <>\r\n",
        ),
        ("Shop <noreply@shop.example>", "Your order", ""),
        ("Support <support@example.com>", "Loop", ""),
        (
            "Eve <eve@partner.example>",
            "Looping",
            "X-Loop: support@example.com\r\n",
        ),
    ];
    for (i, (from, subject, extra)) in cases.iter().enumerate() {
        dc.append(
            "INBOX",
            &simple_mail(from, &format!("m{i}@x.example"), subject, extra),
            false,
        );
    }
    let s = wd.sync();
    assert_eq!(s["fetched"], cases.len());
    assert_eq!(s["acks_queued"], 0, "{s}");
    assert!(sink.messages().is_empty());
    let rows = outbox(&wd);
    assert_eq!(rows.len(), cases.len());
    for r in &rows {
        assert_eq!(r["status"], "skipped", "{r}");
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    let reasons: Vec<&str> = rows.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no-reply sender") && r.contains("noreply@shop.example")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("own address") || r.contains("kind is loop")),
        "{reasons:?}"
    );
}

#[test]
fn replies_to_an_acknowledgement_thread_and_are_not_acknowledged() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    from_anna(&dc, "r1@customer.example", "Printer broken", "");
    wd.sync();
    let ack_id = sink.messages()[0].header("Message-ID").unwrap();
    // By In-Reply-To only, and by subject tag only.
    from_anna(
        &dc,
        "r2@customer.example",
        "Re: thanks",
        &format!("In-Reply-To: {ack_id}\r\n"),
    );
    from_anna(&dc, "r3@customer.example", "Re: [#1] Printer broken", "");
    let s = wd.sync();
    assert_eq!(s["threaded"], 2, "{s}");
    assert_eq!(s["created"], 0);
    assert_eq!(s["acks_queued"], 0);
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(wd.show(1)["messages"].as_array().unwrap().len(), 4);
}

#[test]
fn acknowledgements_per_sender_are_rate_limited() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "per-sender-per-hour = 2\n");
    for i in 0..4 {
        dc.append(
            "INBOX",
            &simple_mail(
                "Bob <bob@customer.example>",
                &format!("b{i}@customer.example"),
                &format!("Request {i}"),
                "",
            ),
            false,
        );
    }
    let s = wd.sync();
    assert_eq!(s["created"], 4);
    assert_eq!(s["acks_queued"], 2, "{s}");
    assert_eq!(sink.messages().len(), 2);
    let skipped: Vec<_> = outbox(&wd)
        .into_iter()
        .filter(|r| r["status"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
    // A limit that leaves rows out says so (on standard error: the JSON stays an array).
    let run = wd
        .mailticket(&["outbox", "--json", "--limit", "3"])
        .success();
    assert_eq!(run.json().as_array().map(Vec::len), Some(3), "{run:?}");
    assert!(run.stderr.contains("--limit 0"), "{}", run.stderr);
    let all = wd
        .mailticket(&["outbox", "--json", "--limit", "0"])
        .success();
    assert_eq!(all.json().as_array().map(Vec::len), Some(4), "{all:?}");
    assert!(!all.stderr.contains("--limit 0"), "{}", all.stderr);
}

#[test]
fn old_mail_is_not_acknowledged() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&format!(
        "{base}\n{}\n[ack]\nenabled = true\n",
        sink.smtp_toml()
    ));
    // simple_mail is dated 2025: far beyond the default 24 h.
    from_anna(&dc, "old@customer.example", "Old", "");
    let s = wd.sync();
    assert_eq!(s["acks_queued"], 0);
    assert!(
        outbox(&wd)[0]["reason"]
            .as_str()
            .unwrap()
            .contains("older than ack.max-age (86400 s)")
    );
}

#[test]
fn an_smtp_outage_delays_the_acknowledgement_and_the_next_run_sends_it_once() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    sink.stop();
    from_anna(&dc, "o1@customer.example", "Outage", "");
    let run = wd.mailticket(&["sync", "--json"]).code(1);
    let s = run.json();
    assert_eq!(s["created"], 1);
    assert_eq!(s["outbox"]["deferred"], 1, "{s}");
    assert!(
        s["errors"][0].as_str().unwrap().contains("localhost"),
        "{s}"
    );
    assert_eq!(outbox(&wd)[0]["status"], "pending");
    sink.restart();
    // The retry is due after a backoff: force it, as an operator would after an outage.
    wd.mailticket(&["outbox", "--retry", "1"]).success();
    assert_eq!(sink.messages().len(), 1);
    let s = wd.sync();
    assert_eq!(s["outbox"]["sent"], 0);
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(outbox(&wd)[0]["status"], "sent");
}

#[test]
fn refusals_fail_and_temporary_failures_are_retried() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    dc.append(
        "INBOX",
        &simple_mail(
            "R <reject@customer.example>",
            "x1@customer.example",
            "One",
            "",
        ),
        false,
    );
    dc.append(
        "INBOX",
        &simple_mail(
            "T <tempfail@customer.example>",
            "x2@customer.example",
            "Two",
            "",
        ),
        false,
    );
    wd.mailticket(&["sync", "--json"]).code(1);
    let rows = outbox(&wd);
    let by_to = |to: &str| rows.iter().find(|r| r["to"] == to).unwrap().clone();
    let rejected = by_to("reject@customer.example");
    assert_eq!(rejected["status"], "failed");
    assert!(
        rejected["reason"].as_str().unwrap().contains("550"),
        "{rejected}"
    );
    let deferred = by_to("tempfail@customer.example");
    assert_eq!(deferred["status"], "pending");
    assert_eq!(deferred["attempts"], 1);
    assert!(
        deferred["reason"].as_str().unwrap().contains("451"),
        "{deferred}"
    );
    assert!(sink.messages().is_empty());
}

/// The `store outbox` step of `doctor --json`: its status and detail.
fn doctor_outbox(wd: &Workdir) -> (String, String) {
    let v = wd.mailticket(&["doctor", "--json"]).json();
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scope"] == "store" && s["step"] == "outbox")
        .unwrap_or_else(|| panic!("no outbox step: {v}"))
        .clone();
    let text = |k: &str| step[k].as_str().unwrap_or("").to_owned();
    (text("status"), format!("{step}"))
}

#[test]
fn the_outbox_shows_the_next_attempt_filters_by_status_dismisses_and_says_why_nothing_went() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    for (who, id) in [("reject", "y1"), ("tempfail", "y2")] {
        let from = format!("X <{who}@customer.example>");
        let mail = simple_mail(&from, &format!("{id}@customer.example"), id, "");
        dc.append("INBOX", &mail, false);
    }
    wd.mailticket(&["sync", "--json"]).code(1);
    let only = |status: &str| {
        let v = wd
            .mailticket(&["outbox", "--status", status, "--json"])
            .success()
            .json();
        v.as_array().unwrap().clone()
    };
    let (failed, pending) = (only("failed"), only("pending"));
    assert_eq!((failed.len(), pending.len(), only("sent").len()), (1, 1, 0));
    assert_eq!(failed[0]["to"], "reject@customer.example");
    assert_eq!(failed[0]["next_attempt_at"], serde_json::Value::Null);
    let next = pending[0]["next_attempt_at"].as_str().unwrap().to_owned();
    assert!(
        next.as_str() > pending[0]["updated_at"].as_str().unwrap(),
        "{pending:?}"
    );
    // Tables are in local time: in UTC the NEXT column is the JSON's time to the minute.
    let mut cmd = wd.cmd(&["outbox"]);
    cmd.env("TZ", "UTC");
    let table = crate::harness::run(cmd, None).success().stdout;
    assert!(table.lines().next().unwrap().contains("NEXT"), "{table}");
    let line = table.lines().find(|l| l.contains("tempfail@")).unwrap();
    let minute = next[..16].replace('T', " ");
    assert!(line.contains(&minute), "{minute}: {table}");
    wd.mailticket(&["outbox", "--status", "bogus"]).code(2);

    // Nothing due: --send says so, and what waits.
    let run = wd.mailticket(&["outbox", "--send"]).success();
    run.stderr_mentions(&[
        "nothing is due",
        &format!("next attempt at {next}"),
        "1 row(s) failed",
    ]);
    assert!(sink.messages().is_empty());

    // doctor warns about the failed row until it is dismissed.
    let (status, step) = doctor_outbox(&wd);
    assert_eq!(status, "warn", "{step}");
    let id = failed[0]["id"].as_i64().unwrap().to_string();
    let pending_id = pending[0]["id"].as_i64().unwrap().to_string();
    wd.mailticket(&["outbox", "dismiss", &pending_id]).code(2);
    wd.mailticket(&["outbox", "dismiss", "999"]).code(2);
    wd.mailticket(&["outbox", "dismiss", &id]).success();
    let (status, step) = doctor_outbox(&wd);
    assert_eq!(status, "ok", "{step}");
    assert_eq!(only("failed")[0]["dismissed"], true);
    let run = wd.mailticket(&["outbox", "--send"]).success();
    assert!(!run.stderr.contains("row(s) failed"), "{run:?}");
}

#[test]
fn a_row_interrupted_while_sending_is_not_resent() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    sink.stop();
    from_anna(&dc, "c1@customer.example", "Crash", "");
    wd.mailticket(&["sync"]).code(1);
    sink.restart();
    // As if the process died after DATA began: the row is left in 'sending'.
    let db = rusqlite::Connection::open(wd.db()).unwrap();
    db.execute(
        "UPDATE outbox SET status = 'sending', next_attempt_at = 0",
        [],
    )
    .unwrap();
    drop(db);
    let s = wd.sync();
    assert_eq!(s["outbox"]["stuck"], 1, "{s}");
    assert_eq!(s["outbox"]["sent"], 0);
    assert!(sink.messages().is_empty());
    wd.mailticket(&["outbox", "--retry", "1"]).success();
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn implicit_tls_works_and_an_untrusted_server_or_a_wrong_password_is_a_clear_error() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    let implicit = sink
        .smtp_toml()
        .replace(
            &format!("port = {}", sink.port),
            &format!("port = {}", sink.tls_port),
        )
        .replace("tls = \"starttls\"", "tls = \"implicit\"");
    wd.write_raw_config(&format!(
        "{base}\n{implicit}\n[ack]\nenabled = true\nmax-age = 8640000000\n"
    ));
    from_anna(&dc, "t1@customer.example", "TLS", "");
    assert_eq!(wd.sync()["outbox"]["sent"], 1);
    assert_eq!(sink.messages()[0].envelope["tls"], "TLSv1.3");

    // Without the CA the certificate is refused; with a wrong password AUTH is.
    let no_ca: String = implicit
        .lines()
        .filter(|l| !l.starts_with("ca-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    wd.write_raw_config(&format!(
        "{base}\n{no_ca}\n[ack]\nenabled = true\nmax-age = 8640000000\n"
    ));
    from_anna(&dc, "t2@customer.example", "TLS 2", "");
    let run = wd.mailticket(&["sync", "--json"]).code(1);
    let err = run.json()["errors"][0].as_str().unwrap().to_lowercase();
    assert!(
        err.contains("localhost") && err.contains("certificate"),
        "{err}"
    );
    let bad = implicit.replace("password = \"support-pass\"", "password = \"wrong\"");
    wd.write_raw_config(&format!(
        "{base}\n{bad}\n[ack]\nenabled = true\nmax-age = 8640000000\n"
    ));
    wd.mailticket(&["outbox", "--retry", "2"]).code(1);
    let row = outbox(&wd).into_iter().find(|r| r["id"] == 2).unwrap();
    assert_eq!(row["status"], "pending", "{row}");
    assert!(
        row["reason"].as_str().unwrap().contains("authentication"),
        "{row}"
    );
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn agent_replies_keep_the_thread_across_three_rounds() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    wd.write_raw_config(
        &std::fs::read_to_string(wd.config())
            .unwrap()
            .replace("enabled = true", "enabled = false"),
    );
    from_anna(
        &dc,
        "round0@customer.example",
        "Printer",
        "Cc: Carl <carl@customer.example>, support@example.com\r\n",
    );
    wd.sync();
    let mut chain = vec!["<round0@customer.example>".to_owned()];
    for round in 1..=3 {
        wd.mailticket(&["reply", "1", "--body", &format!("Answer {round}")])
            .success();
        let sent = sink.messages().pop().unwrap();
        assert_eq!(sent.header("In-Reply-To").unwrap(), *chain.last().unwrap());
        assert_eq!(sent.header("References").unwrap(), chain.join(" "));
        assert!(sent.header("Subject").unwrap().contains("[#1]"));
        assert_eq!(sent.header("Auto-Submitted"), None);
        if round == 1 {
            // Cc of the message answered, minus our own addresses; Cc'd people get it too.
            let cc = sent.header("Cc").unwrap_or_default();
            assert!(
                cc.contains("carl@customer.example") && !cc.contains("support@"),
                "{cc}"
            );
            let rcpt = sent.envelope["rcpt_tos"].to_string();
            assert!(rcpt.contains("carl@customer.example"), "{rcpt}");
        }
        let ours = sent.header("Message-ID").unwrap();
        chain.push(ours.clone());
        // The customer answers the reply, as a mail client would.
        let refs = chain.join(" ");
        let theirs = format!("round{round}@customer.example");
        from_anna(
            &dc,
            &theirs,
            "Re: [#1] Printer",
            &format!("In-Reply-To: {ours}\r\nReferences: {refs}\r\n"),
        );
        let s = wd.sync();
        assert_eq!(s["threaded"], 1, "round {round}: {s}");
        chain.push(format!("<{theirs}>"));
    }
    assert_eq!(id_of(&wd.tickets()[0]), 1);
    assert_eq!(wd.tickets().len(), 1);
    wd.mailticket(&["close", "1"]).success();
    assert_eq!(wd.tickets()[0]["status"], "closed");
    wd.mailticket(&["reopen", "1"]).success();
    assert_eq!(wd.tickets()[0]["status"], "open");
}

#[test]
fn watch_acknowledges_new_mail_as_it_arrives() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    let w = wd.watch(&[]);
    w.wait_log("connected", 1, std::time::Duration::from_secs(30));
    from_anna(&dc, "w1@customer.example", "Watch me", "");
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the acknowledgement",
        || sink.messages().len() == 1,
    );
    let ack = &sink.messages()[0];
    assert_eq!(ack.header("In-Reply-To").unwrap(), "<w1@customer.example>");
    w.signal("TERM");
    assert_eq!(outbox(&wd)[0]["status"], "sent");
}

#[test]
fn a_configured_tag_marker_is_what_we_write_and_what_we_match() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&format!(
        "{base}\n{}\n[ack]\nenabled = true\nmax-age = 8640000000\n\n[threading]\ntag = \"Ticket#\"\n",
        sink.smtp_toml()
    ));
    from_anna(&dc, "t1@customer.example", "Printer", "");
    assert_eq!(wd.sync()["created"], 1);
    let ack = &sink.messages()[0];
    let subject = ack.header("Subject").unwrap();
    assert!(subject.contains("[Ticket#1]"), "{subject}");
    assert!(!subject.contains("[#1]"), "{subject}");

    wd.mailticket(&["reply", "1", "--body", "Fixed."]).success();
    let reply = sink.messages()[1].header("Subject").unwrap();
    assert_eq!(reply, "Re: [Ticket#1] Printer");

    // The customer writes again with only the tag to go by (a new mail, no In-Reply-To).
    from_anna(&dc, "t2@customer.example", "Re: [Ticket#1] Printer", "");
    let s = wd.sync();
    assert_eq!(s["threaded"], 1, "{s}");
    assert_eq!(wd.tickets().len(), 1);
}

#[test]
fn a_huge_subject_and_a_folded_reference_still_make_a_well_formed_acknowledgement() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    let huge = "Printer ".repeat(1 << 17) + &"x".repeat(1 << 20);
    from_anna(
        &dc,
        "huge@customer.example",
        &huge,
        "References: <first@customer.example>\r\n <a-rather-long-message-id-folded@\r\n customer.example>\r\n",
    );
    let s = wd.sync();
    assert_eq!(s["outbox"]["sent"], 1, "{s}");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let head = m.raw.split("\r\n\r\n").next().unwrap();
    for line in head.split("\r\n") {
        assert!(line.len() <= 998, "a {}-byte header line", line.len());
        assert!(!line.trim().is_empty(), "an empty header line in {head}");
    }
    assert!(m.raw.len() < 20_000, "{} bytes", m.raw.len());
    let subject = m.header("Subject").unwrap();
    assert!(subject.starts_with("[#1] Printer Printer"), "{subject}");
    assert_eq!(
        m.header("References").unwrap(),
        "<first@customer.example> <a-rather-long-message-id-folded@customer.example> \
         <huge@customer.example>"
    );
    assert_eq!(m.header("In-Reply-To").unwrap(), "<huge@customer.example>");
}

/// The outbox rows' STATUS by recipient, read straight from the store.
fn status_of(wd: &Workdir, to: &str) -> Option<String> {
    let db = rusqlite::Connection::open(wd.db()).ok()?;
    db.query_row("SELECT status FROM outbox WHERE rcpt_to = ?1", [to], |r| {
        r.get(0)
    })
    .ok()
}

#[test]
fn no_answer_after_the_final_dot_leaves_the_ack_in_sending_and_it_is_never_resent() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    // The sink answers a "slow" recipient's message after 5 s and drops the connection of a
    // "drop" recipient after the message: both after the final dot.
    let config = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&config.replace("timeout = 20\n", "timeout = 2\n"));
    for (who, id) in [("slow", "s1"), ("drop", "d1")] {
        let from = format!("{who} <{who}@customer.example>");
        let mail = simple_mail(&from, &format!("{id}@customer.example"), "Hello", "");
        dc.append("INBOX", &mail, false);
    }
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert_eq!(s["created"], 2);
    assert_eq!(s["outbox"]["uncertain"], 2, "{s}");
    assert_eq!(s["outbox"]["deferred"], 0, "{s}");
    assert_eq!(sink.messages().len(), 1, "the slow one arrived once");
    let rows = outbox(&wd);
    for r in &rows {
        assert_eq!(r["status"], "sending", "{r}");
        assert_eq!(r["sending_now"], false, "{r}");
        let retry = format!("mailticket outbox --retry {}", r["id"]);
        assert!(r["detail"].as_str().unwrap().contains(&retry), "{r}");
    }
    let listing = wd.mailticket(&["outbox"]).success();
    assert!(
        listing.stdout.contains("may have been delivered")
            && listing.stdout.contains("mailticket outbox --retry"),
        "{listing:?}"
    );
    // Neither another send nor another sync sends them again.
    let again = wd.mailticket(&["outbox", "--send"]).success();
    again.stderr_mentions(&["found in 'sending'", "--retry"]);
    let s = wd.sync();
    assert_eq!(s["outbox"]["stuck"], 2, "{s}");
    assert_eq!(s["outbox"]["sent"], 0, "{s}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(status_of(&wd, "slow@customer.example").unwrap(), "sending");
}

#[test]
fn an_ack_being_sent_right_now_is_neither_reported_stuck_nor_retried() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    from_anna(&dc, "n1@customer.example", "Now", "");
    let mail = simple_mail(
        "Slow <slow@customer.example>",
        "n2@customer.example",
        "Slow one",
        "",
    );
    dc.append("INBOX", &mail, false);
    // sync sends the slow one for 5 s; meanwhile another process looks at the outbox.
    let mut sync = crate::harness::spawn(wd.cmd(&["sync"]));
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the slow acknowledgement in 'sending'",
        || status_of(&wd, "slow@customer.example").as_deref() == Some("sending"),
    );
    let send = wd.mailticket(&["outbox", "--send"]).success();
    assert!(
        !send.stderr.contains("found in 'sending'") && !send.stderr.contains("--retry"),
        "a row being sent was called stuck: {send:?}"
    );
    assert!(send.stdout.contains("being sent right now"), "{send:?}");
    let id = rusqlite::Connection::open(wd.db())
        .unwrap()
        .query_row(
            "SELECT id FROM outbox WHERE rcpt_to = 'slow@customer.example'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        .to_string();
    let retry = wd.mailticket(&["outbox", "--retry", &id]).code(1);
    retry.stderr_mentions(&["being sent right now", "not retried"]);
    assert!(sync.wait().unwrap().success());
    assert_eq!(status_of(&wd, "slow@customer.example").unwrap(), "sent");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let to_slow = sink
        .messages()
        .iter()
        .filter(|m| m.envelope["rcpt_tos"][0] == "slow@customer.example")
        .count();
    assert_eq!(to_slow, 1, "the acknowledgement went out more than once");
}

#[test]
fn import_with_ack_counts_the_acknowledgements_per_path() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    let mut paths = Vec::new();
    for (file, from, id, subject) in [
        (
            "request.eml",
            "Anna <anna@customer.example>",
            "imp1@customer.example",
            "Printer",
        ),
        (
            "oof.eml",
            "Bob <bob@customer.example>",
            "imp2@customer.example",
            "Auto reply: Printer",
        ),
    ] {
        let p = wd.path(file);
        std::fs::write(&p, simple_mail(from, id, subject, "")).unwrap();
        paths.push(p.to_string_lossy().into_owned());
    }
    let (h, m) = (&paths[0], &paths[1]);
    let s = wd
        .mailticket(&["import", "--ack", "--json", h, m])
        .success()
        .json();
    assert_eq!(s["acks_queued"], 1, "{s}");
    assert_eq!(s["mailboxes"][0]["acks_queued"], 1, "{s}");
    assert_eq!(s["mailboxes"][1]["acks_queued"], 0, "{s}");
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn a_drain_sends_over_one_connection_and_a_dropped_one_is_replaced() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    let wd = setup(&dc, &sink, "");
    // The sink drops the connection of a "drop" recipient after its message: that one is
    // uncertain, and the messages after it go out over a new connection.
    for (i, who) in ["anna", "bruno", "drop", "chloe", "david"]
        .iter()
        .enumerate()
    {
        let from = format!("{who} <{who}@customer.example>");
        let mail = simple_mail(&from, &format!("c{i}@customer.example"), "Hello", "");
        dc.append("INBOX", &mail, false);
    }
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert_eq!(s["created"], 5, "{s}");
    assert_eq!(s["outbox"]["sent"], 4, "{s}");
    assert_eq!(s["outbox"]["uncertain"], 1, "{s}");
    let got = sink.messages();
    let on = |who: &str| {
        got.iter()
            .find(|m| m.envelope["rcpt_tos"][0] == format!("{who}@customer.example"))
            .map(|m| m.envelope["connection"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(got.len(), 4, "the dropped one is not stored");
    assert_eq!(on("anna"), on("bruno"), "one connection before the drop");
    assert_eq!(on("chloe"), on("david"), "one connection after it");
    assert_ne!(on("bruno"), on("chloe"), "a new connection after the drop");
    assert_eq!(status_of(&wd, "drop@customer.example").unwrap(), "sending");
    assert_eq!(status_of(&wd, "david@customer.example").unwrap(), "sent");
}
