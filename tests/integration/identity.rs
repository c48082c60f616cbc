//! Several mailboxes, each with its own identity: two mailboxes in one Dovecot, each with its
//! own From, sign-off and SMTP server (two real SMTP sinks), for acknowledgements and replies.

use crate::harness::{Dovecot, Workdir, quoted, simple_mail};
use crate::sink::{Received, Sink};

/// The support mailbox on `[smtp]` (sink A) signing as configured in `[mailbox.ack]`; the alice
/// mailbox with its own From and `[mailbox.smtp]` (sink B, its own login), no signature.
fn two_identities(dc: &Dovecot, a: &Sink, b: &Sink) -> Workdir {
    let wd = Workdir::new();
    let alice = format!(
        "{}from = \"Alice Shop <shop@example.com>\"\n\
         [mailbox.smtp]\nport = {}\nca-file = {}\nusername = \"alice\"\npassword = \"alice-pass\"\n",
        dc.mailbox_of("alice").toml(),
        b.port,
        quoted(&b.ca_file().to_string_lossy()),
    );
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{}[mailbox.ack]\nsignature = \"The Support Team\"\n\n{alice}\n{}\n\
         [ack]\nenabled = true\nmax-age = 8640000000\n",
        quoted(&wd.db().to_string_lossy()),
        dc.mailbox().toml(),
        a.smtp_toml(),
    ));
    wd
}

/// The last non-empty line of a sent message's text: its sign-off.
fn sign_off(m: &Received) -> String {
    let body = m.raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    body.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn each_mailbox_acknowledges_and_replies_as_itself_through_its_own_server() {
    let dc = Dovecot::start();
    let (a, b) = (Sink::start(), Sink::start_users("alice:alice-pass"));
    let wd = two_identities(&dc, &a, &b);
    let anna = simple_mail(
        "Anna <anna@customer.example>",
        "s1@customer.example",
        "Printer",
        "",
    );
    dc.append("INBOX", &anna, false);
    let bert = simple_mail(
        "Bert <bert@customer.example>",
        "a1@customer.example",
        "Order",
        "",
    );
    dc.append_to("alice", "INBOX", &bert);

    let s = wd.sync();
    assert_eq!(
        (s["created"].as_u64(), s["acks_queued"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_eq!(s["outbox"]["sent"], 2, "{s}");
    let (sent_a, sent_b) = (a.messages(), b.messages());
    assert_eq!((sent_a.len(), sent_b.len()), (1, 1));

    let support = &sent_a[0];
    assert_eq!(support.envelope["auth_user"], "support");
    assert_eq!(support.envelope["rcpt_tos"][0], "anna@customer.example");
    assert_eq!(
        support.header("From").unwrap(),
        "Support <support@example.com>"
    );
    assert_eq!(sign_off(support), "The Support Team");

    let shop = &sent_b[0];
    assert_eq!(shop.envelope["auth_user"], "alice");
    assert_eq!(shop.envelope["mail_from"], "shop@example.com");
    assert_eq!(shop.envelope["rcpt_tos"][0], "bert@customer.example");
    assert_eq!(shop.envelope["tls"], "TLSv1.3");
    assert_eq!(
        shop.header("From").unwrap(),
        "\"Alice Shop\" <shop@example.com>"
    );
    assert!(
        shop.header("Message-ID")
            .unwrap()
            .ends_with("@example.com>")
    );
    // The default sign-off is the From's display name, never the internal name "alice".
    assert_eq!(sign_off(shop), "Alice Shop");

    // A reply goes out as the mailbox the ticket's mail arrived in, through its server.
    let bert_ticket = wd
        .tickets()
        .into_iter()
        .find(|t| t["mailbox"] == "alice")
        .unwrap();
    let id = bert_ticket["id"].as_u64().unwrap().to_string();
    wd.mailticket(&["reply", &id, "--body", "It ships today."])
        .success();
    let sent_b = b.messages();
    assert_eq!((a.messages().len(), sent_b.len()), (1, 2));
    assert_eq!(
        sent_b[1].header("From").unwrap(),
        "\"Alice Shop\" <shop@example.com>"
    );
    assert_eq!(sent_b[1].envelope["auth_user"], "alice");
    assert_eq!(sent_b[1].envelope["rcpt_tos"][0], "bert@customer.example");
    let rows = wd.mailticket(&["outbox", "--json"]).success().json();
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.iter().filter(|r| r["mailbox"] == "alice").count(),
        2,
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r["mailbox"] == "support").count(),
        1,
        "{rows:?}"
    );

    // doctor checks the mailbox's own SMTP server as it checks [smtp]; a wrong password there
    // fails that step alone.
    let v = wd.mailticket(&["doctor", "--json"]).success().json();
    let step = |scope: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scope"] == scope && s["step"] == "connect")
            .cloned()
    };
    assert_eq!(step("smtp").unwrap()["status"], "ok", "{v}");
    let own = step("mailbox alice smtp").unwrap_or_else(|| panic!("no own smtp step: {v}"));
    assert!(
        own["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&b.port.to_string()),
        "{own}"
    );
    let config = std::fs::read_to_string(wd.config()).unwrap();
    let wrong = config.replace(
        "password = \"alice-pass\"\n\n[smtp]",
        "password = \"wrong\"\n\n[smtp]",
    );
    assert_ne!(wrong, config);
    wd.write_raw_config(&wrong);
    let v = wd.mailticket(&["doctor", "--json"]).code(1).json();
    let failed: Vec<_> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["scope"], "mailbox alice smtp", "{v}");
}

#[test]
fn a_bad_mailbox_smtp_key_is_a_config_error_naming_the_key_and_the_file() {
    let dc = Dovecot::start();
    let sink = Sink::start();
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{}[mailbox.smtp]\nprot = 2525\n\n{}",
        quoted(&wd.db().to_string_lossy()),
        dc.mailbox().toml(),
        sink.smtp_toml(),
    ));
    let run = wd.mailticket(&["sync"]).code(2);
    run.stderr_mentions(&["prot", &wd.config().to_string_lossy()]);
    let run = wd.mailticket(&["doctor"]).code(2);
    assert!(run.stdout.contains("unknown field `prot`"), "{run:?}");
}
