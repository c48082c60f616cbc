//! The command-line contract: JSON shapes, config errors, `init`.

use serde_json::Value;

use crate::harness::{
    Dovecot, Mailbox, SUPPORT_ADDR, Workdir, assert_rfc3339, assert_summary, created, id_of,
    mailgen, mailticket_cmd, quoted, run,
};

/// SHA-256 (hex) of the first attachment of MESSAGE and its decoded size, by Python's email
/// package: an independent reading of the same bytes.
fn python_attachment(message: &[u8]) -> (String, u64) {
    let script = "import email, email.policy, hashlib, sys\n\
        m = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)\n\
        a = next(m.iter_attachments()).get_payload(decode=True)\n\
        print(hashlib.sha256(a).hexdigest(), len(a))\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script]);
    let out = run(cmd, Some(message)).success();
    let (hash, size) = out.stdout.trim().split_once(' ').unwrap();
    (hash.to_owned(), size.parse().unwrap())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string: {v}"))
}

fn array_of<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {v}"))
}

/// The fields `tickets --json` and `show --json` share.
fn assert_ticket_fields(t: &Value, messages: u64) {
    assert!(t["id"].is_u64(), "id: {t}");
    assert!(!str_of(t, "subject").is_empty(), "subject: {t}");
    assert_eq!(t["status"], "open", "{t}");
    assert!(str_of(t, "customer").contains('@'), "customer: {t}");
    assert_rfc3339(&t["created_at"]);
    assert_rfc3339(&t["updated_at"]);
    assert_eq!(t["messages"].as_u64(), Some(messages), "messages: {t}");
}

#[test]
fn tickets_and_show_json_have_the_documented_fields() {
    let dc = Dovecot::start();
    let small = mailgen::one(0, 3, false);
    let large = mailgen::one(1, 3, true);
    dc.append("INBOX", &small, false);
    dc.append("INBOX", &large, false);
    let server = dc.messages("INBOX");
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(2));

    let tickets = wd.tickets();
    assert_eq!(tickets.len(), 2);
    for t in &tickets {
        assert_ticket_fields(t, 1);
    }

    let mut seen_large = false;
    for t in &tickets {
        let shown = wd.show(id_of(t));
        // `show` is the ticket object plus its messages (where `messages` is the array)
        for key in [
            "id",
            "subject",
            "status",
            "customer",
            "created_at",
            "updated_at",
        ] {
            assert_eq!(shown[key], t[key], "show and tickets differ in {key}");
        }
        let msgs = array_of(&shown, "messages");
        assert_eq!(msgs.len(), 1, "{shown}");
        let m = &msgs[0];
        let message_id = str_of(m, "message_id");
        assert!(
            !message_id.contains(['<', '>']),
            "brackets in {message_id:?}"
        );
        let on_server = server.iter().find(|s| s.message_id == message_id);
        assert!(on_server.is_some(), "{message_id} is not on the server");
        assert_eq!(m["direction"], "in", "{m}");
        assert!(str_of(m, "from").contains('@'), "from: {m}");
        assert!(
            str_of(m, "from").contains(str_of(t, "customer")),
            "the customer is the sender: {m} / {t}"
        );
        let to = array_of(m, "to");
        assert!(
            to.iter().any(|a| a.to_string().contains(SUPPORT_ADDR)),
            "to: {m}"
        );
        assert!(array_of(m, "cc").is_empty(), "cc: {m}");
        assert!(!str_of(m, "subject").is_empty(), "subject: {m}");
        assert!(!str_of(m, "date").is_empty(), "date: {m}");
        assert_eq!(m["kind"], "normal", "{m}");
        assert!(array_of(m, "reasons").iter().all(Value::is_string), "{m}");
        assert!(
            str_of(m, "text").contains("Hello support team"),
            "text: {m}"
        );

        let attachments = array_of(m, "attachments");
        if message_id.contains(".L@") {
            seen_large = true;
            assert_eq!(attachments.len(), 1, "{m}");
            let a = &attachments[0];
            let (sha256, size) = python_attachment(&large);
            assert!(str_of(a, "filename").ends_with(".pdf"), "{a}");
            assert_eq!(a["content_type"], "application/pdf", "{a}");
            assert_eq!(a["size"].as_u64(), Some(size), "{a}");
            assert_eq!(str_of(a, "sha256").to_lowercase(), sha256, "{a}");
        } else {
            assert!(attachments.is_empty(), "{m}");
        }
    }
    assert!(seen_large, "the large message was shown");
}

#[test]
fn an_unknown_config_key_is_a_config_error_naming_key_and_file() {
    let dc = Dovecot::start();
    let wd = Workdir::with(&[dc.mailbox()]);
    let good = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&good.replace("username =", "user-name-typo = \"x\"\nusername ="));
    let run = wd.mailticket(&["sync", "--json"]).code(2);
    run.stderr_mentions(&["user-name-typo", &wd.config().to_string_lossy()]);
}

#[test]
fn a_bad_ack_template_is_a_config_error_before_any_connection() {
    // Nothing listens on port 1: a run that got as far as the network would fail otherwise.
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n[[mailbox]]\nname = 's'\nhost = '127.0.0.1'\nport = 1\n\
         tls = 'none'\nallow-insecure = true\nusername = 'u'\npassword = 'p'\n\
         [smtp]\nhost = '127.0.0.1'\nport = 1\ntls = 'none'\nallow-insecure = true\n\
         from = 'support@example.com'\n[ack]\nenabled = true\n\
         subject = '{{{{ ticket.nope }}}}'\n",
        quoted(&wd.db().to_string_lossy())
    ));
    for args in [&["sync", "--json"][..], &["watch"], &["tickets", "--json"]] {
        let run = wd.mailticket(args).code(2);
        run.stderr_mentions(&["[ack]", "subject", &wd.config().to_string_lossy()]);
    }
}

#[test]
fn init_writes_a_config_that_parses() {
    let wd = Workdir::new();
    let path = wd.path("sample.toml");
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("init").arg(&path);
    run(cmd, None).success();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("[[mailbox]]"), "{text}");
    assert!(text.contains('#'), "the sample is commented: {text}");

    // It parses: what stops `tickets` is the store nobody has made yet.
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--config").arg(&path).args(["tickets", "--json"]);
    run(cmd, None).code(2).stderr_mentions(&["no store at"]);
}

#[test]
fn reading_commands_need_only_a_db() {
    let wd = Workdir::new();
    drop(mailticket::store::Store::open(&wd.db()).unwrap());
    for args in [&["tickets", "--json"][..], &["quarantine", "--json"]] {
        let v = wd.mailticket_db(args, None).success().json();
        assert_eq!(v, serde_json::json!([]), "{args:?}");
    }
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // `mailticket tickets --json | head -0`: the reader is gone before the first write
    let wd = Workdir::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--db").arg(wd.db()).args(["tickets", "--json"]);
    cmd.stdout(writer).stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.code() != Some(101),
        "a closed pipe on stdout made mailticket panic ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn the_config_is_found_via_the_environment_and_the_working_directory() {
    let wd = Workdir::new();
    // a mailbox that is never contacted: these commands only read the store
    wd.write_config(&[Mailbox {
        name: "support".into(),
        host: "imap.invalid".into(),
        port: 993,
        tls: "implicit".into(),
        ca_file: None,
        allow_insecure: false,
        username: "support".into(),
        password: quoted("unused"),
        folder: "INBOX".into(),
        after: quoted("seen"),
    }]);
    let mail = mailgen::one(0, 5, false);
    wd.mailticket_db(&["ingest"], Some(&mail)).success();
    let elsewhere = Workdir::new();

    // $MAILTICKET_CONFIG names the file whose store holds the ticket
    let mut cmd = mailticket_cmd(&elsewhere.dir);
    cmd.env("MAILTICKET_CONFIG", wd.config())
        .args(["tickets", "--json"]);
    let tickets = run(cmd, None).success().json();
    assert_eq!(tickets.as_array().map(Vec::len), Some(1), "{tickets}");

    // else ./mailticket.toml
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.args(["tickets", "--json"]);
    let tickets = run(cmd, None).success().json();
    assert_eq!(tickets.as_array().map(Vec::len), Some(1), "{tickets}");
}

#[test]
fn json_logs_go_to_stderr_one_object_per_line() {
    let wd = Workdir::new();
    let run = wd
        .mailticket_db(
            &["--log-format", "json", "-v", "ingest"],
            Some(&mailgen::one(0, 5, false)),
        )
        .success();
    assert!(
        run.stdout.trim().is_empty(),
        "ingest prints no data: {run:?}"
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "-v logs something: {run:?}");
    for line in lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
}

#[test]
fn show_reports_the_kind_of_machine_mail_with_reasons() {
    let wd = Workdir::new();
    let cases = [
        ("Auto-Submitted: auto-replied\r\n", "auto_reply", "ooo"),
        (
            "List-Id: <announce.lists.example>\r\nPrecedence: list\r\n",
            "list",
            "newsletter",
        ),
    ];
    for (headers, _, local) in cases {
        let from = format!("{local}@sender.example");
        let mail = crate::harness::simple_mail(
            &from,
            &format!("{local}-1@sender.example"),
            "Machine mail",
            headers,
        );
        wd.mailticket_db(&["ingest"], Some(&mail)).success();
    }
    let tickets = crate::harness::tickets_of(
        wd.mailticket_db(&["tickets", "--status", "all", "--json"], None),
    );
    for (_, kind, local) in cases {
        let messages: Vec<Value> = tickets
            .iter()
            .flat_map(|t| {
                let shown = wd
                    .mailticket_db(&["show", &id_of(t).to_string(), "--json"], None)
                    .success()
                    .json();
                array_of(&shown, "messages").clone()
            })
            .filter(|m| str_of(m, "from").starts_with(local))
            .collect();
        assert_eq!(messages.len(), 1, "{local}: {tickets:?}");
        let m = &messages[0];
        assert_eq!(m["kind"], kind, "{m}");
        assert!(
            !array_of(m, "reasons").is_empty(),
            "a reason is recorded: {m}"
        );
    }
}

#[test]
fn save_attachments_never_follows_a_link_planted_in_the_folder() {
    let wd = Workdir::new();
    let mail = b"From: Anna <anna@customer.example>\r\nTo: support@example.com\r\n\
Subject: Logs\r\nMessage-ID: <att1@customer.example>\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
--b1\r\nContent-Type: text/plain; name=\"report.txt\"\r\n\
Content-Disposition: attachment; filename=\"report.txt\"\r\n\r\nATTACHED-DATA\r\n\
--b1\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\
Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nMORE-DATA\r\n--b1--\r\n";
    wd.mailticket_db(&["ingest"], Some(mail)).success();
    let (out, outside) = (wd.path("out"), wd.path("outside"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // One link to a file that does not exist yet, one to a file that does.
    std::os::unix::fs::symlink(outside.join("planted"), out.join("report.txt")).unwrap();
    std::fs::write(outside.join("precious"), "KEEP").unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), out.join("notes.txt")).unwrap();

    let out_arg = out.to_string_lossy().into_owned();
    wd.mailticket_db(&["show", "1", "--save-attachments", &out_arg], None)
        .success();
    assert!(
        !outside.join("planted").exists(),
        "an attachment was written through the link"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).unwrap(),
        "KEEP"
    );
    // Both links are untouched, and the attachments are saved beside them.
    for name in ["report.txt", "notes.txt"] {
        assert!(out.join(name).is_symlink(), "{name}");
    }
    let saved = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert!(saved("2-report.txt").contains("ATTACHED-DATA"));
    assert!(saved("2-notes.txt").contains("MORE-DATA"));
}

#[test]
fn quiet_sync_says_nothing_when_all_is_well_nor_when_another_run_holds_the_lock() {
    let dc = crate::harness::Dovecot::start();
    dc.append(
        "INBOX",
        &crate::harness::simple_mail(
            "Anna <anna@customer.example>",
            "<q1@customer.example>",
            "Printer",
            "",
        ),
        false,
    );
    let wd = Workdir::with(&[dc.mailbox()]);
    for _ in 0..2 {
        let run = wd.mailticket(&["-q", "sync"]).success();
        assert!(run.stdout.is_empty() && run.stderr.is_empty(), "{run:?}");
    }
    let held = mailticket::lock::StoreLock::acquire(&wd.db(), "watch").unwrap();
    let locked = wd.mailticket(&["-q", "sync"]).code(75);
    assert!(
        locked.stdout.is_empty() && locked.stderr.is_empty(),
        "{locked:?}"
    );
    let loud = wd.mailticket(&["sync"]).code(75);
    loud.stderr_mentions(&["lock"]);
    drop(held);
    let table = wd.mailticket(&["sync"]).success();
    assert!(table.stdout.contains("SOURCE"), "{table:?}");
}

#[test]
fn ingest_with_a_broken_config_asks_the_mta_to_try_again() {
    let wd = Workdir::new();
    wd.write_raw_config("[store]\npath = \"x.db\"\nbogus-key = 1\n");
    let mail = crate::harness::simple_mail(
        "Anna <anna@customer.example>",
        "<i1@customer.example>",
        "Hi",
        "",
    );
    let run = crate::harness::run(wd.cmd(&["ingest"]), Some(&mail)).code(75);
    run.stderr_mentions(&["bogus-key"]);
}

/// A store with one ticket (opened by ingesting a message from Anna with `message_id` and
/// `subject`) and `[smtp]` pointing at a fresh sink.
fn one_ticket_and_a_sink(message_id: &str, subject: &str) -> (crate::sink::Sink, Workdir) {
    let sink = crate::sink::Sink::start();
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n\n{}",
        crate::harness::quoted(&wd.db().to_string_lossy()),
        sink.smtp_toml()
    ));
    let mail = crate::harness::simple_mail("Anna <anna@customer.example>", message_id, subject, "");
    crate::harness::run(wd.cmd(&["ingest"]), Some(&mail)).success();
    (sink, wd)
}

#[test]
fn an_empty_reply_is_refused_and_nothing_is_sent() {
    let (sink, wd) = one_ticket_and_a_sink("<e1@customer.example>", "Hi");
    let run = wd.mailticket(&["reply", "1", "--body", "  \n "]).code(2);
    run.stderr_mentions(&["empty"]);
    assert!(sink.messages().is_empty());
}

#[test]
fn reply_dry_run_prints_the_message_and_queues_nothing() {
    let (sink, wd) = one_ticket_and_a_sink("<d1@customer.example>", "Printer on fire");
    let run = wd
        .mailticket(&["reply", "1", "--body", "Put it out, please.", "--dry-run"])
        .success();
    for needle in [
        "In-Reply-To: <d1@customer.example>",
        "Printer on fire",
        "Put it out, please.",
        "anna@customer.example",
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {run:?}");
    }
    assert!(sink.messages().is_empty(), "nothing sent");
    let outbox = wd.mailticket(&["outbox", "--json"]).success().json();
    assert_eq!(outbox.as_array().map(Vec::len), Some(0), "{outbox}");
}

#[test]
fn ingest_for_an_unknown_mailbox_stores_and_warns() {
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n",
        crate::harness::quoted(&wd.db().to_string_lossy()),
    ));
    let mail = crate::harness::simple_mail(
        "Anna <anna@customer.example>",
        "<u1@customer.example>",
        "Hi",
        "",
    );
    let run =
        crate::harness::run(wd.cmd(&["ingest", "--mailbox", "nosuch"]), Some(&mail)).success();
    run.stderr_mentions(&["nosuch", "names no [[mailbox]]"]);
    let tickets = wd.mailticket(&["tickets", "--json"]).success().json();
    assert_eq!(tickets.as_array().map(Vec::len), Some(1), "{tickets}");
}
