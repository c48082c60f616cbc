//! Mail understanding through the built binary, the way an operator (or a corpus run) uses
//! it: `import` over files with any name, mbox files and nested folders, then `show --json`.

use std::path::Path;

use crate::harness::{Workdir, id_of, tickets_of};

fn sample(family: &str, name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(family)
        .join(format!("{name}.eml"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `show --json` message objects of every ticket, by Message-ID.
fn messages(wd: &Workdir) -> Vec<(serde_json::Value, serde_json::Value)> {
    let mut out = Vec::new();
    for t in tickets_of(wd.mailticket_db(&["tickets", "--status", "all", "--json"], None)) {
        let shown = wd
            .mailticket_db(&["show", &id_of(&t).to_string(), "--json"], None)
            .success()
            .json();
        for m in shown["messages"].as_array().unwrap() {
            out.push((shown.clone(), m.clone()));
        }
    }
    out
}

#[test]
fn import_any_file_name_mbox_and_nested_folders_then_show_kinds_and_reasons() {
    let wd = Workdir::new();
    let root = wd.path("mail");
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    // One message per file, whatever the name.
    std::fs::write(root.join("oof.txt"), sample("auto_reply", "exchange_oof")).unwrap();
    std::fs::write(
        root.join("nested/NOEXTENSION"),
        sample("bounce", "gmail_ndr"),
    )
    .unwrap();
    std::fs::write(
        root.join("nested/deeper/person.msg"),
        sample("normal", "person_out_of_office_help"),
    )
    .unwrap();
    // An mbox holding two more.
    let mut mbox = Vec::new();
    for (f, n) in [("list", "mailman_list"), ("bounce", "exim_ndr")] {
        mbox.extend_from_slice(b"From MAILER-DAEMON Mon Mar 17 14:00:03 2025\n");
        mbox.extend_from_slice(&sample(f, n));
        mbox.extend_from_slice(b"\n");
    }
    std::fs::write(root.join("nested/archive"), mbox).unwrap();

    let summary = wd
        .mailticket_db(&["import", root.to_str().unwrap(), "--json"], None)
        .success()
        .json();
    assert_eq!(summary["fetched"], 5, "{summary}");
    assert_eq!(summary["quarantined"], 0, "{summary}");

    let all = messages(&wd);
    let kind_of = |needle: &str| -> (String, Vec<String>, String) {
        let (t, m) = all
            .iter()
            .find(|(_, m)| m["message_id"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no message {needle} in {all:?}"));
        let reasons = m["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        (
            m["kind"].as_str().unwrap().to_owned(),
            reasons,
            t["status"].as_str().unwrap().to_owned(),
        )
    };
    let (k, r, _) = kind_of("AM6PR04MB5432");
    assert_eq!(k, "auto_reply");
    assert!(
        r.contains(&"auto-submitted: auto-generated".to_owned()),
        "{r:?}"
    );
    let (k, r, status) = kind_of("GMR@mx.google.com");
    assert_eq!(k, "bounce");
    assert!(r.contains(&"dsn: action failed 5.1.1".to_owned()), "{r:?}");
    // Nothing we know was bounced: kept, closed, never worked on.
    assert_eq!(status, "closed");
    let (k, r, status) = kind_of("out-of-office@mail.client.example");
    assert_eq!(
        (k.as_str(), r.len(), status.as_str()),
        ("normal", 0, "open")
    );
    assert_eq!(kind_of("CAOxyz123").0, "list");
    assert_eq!(kind_of("E1tBcDe-000AbC-2x").0, "bounce");

    // The text view shows the reasons too.
    let gmail_ticket = all
        .iter()
        .find(|(_, m)| m["kind"] == "bounce")
        .map(|(t, _)| t["id"].as_u64().unwrap())
        .unwrap();
    let text = wd
        .mailticket_db(&["show", &gmail_ticket.to_string()], None)
        .success();
    assert!(text.stdout.contains("reasons: "), "{}", text.stdout);
}

#[test]
fn show_hides_quoted_history_full_shows_it_raw_prints_the_stored_bytes() {
    let wd = Workdir::new();
    let reply = sample("quotes", "outlook_original_message");
    // CRLF and a byte that is not UTF-8 in the raw message: --raw must give it back exactly.
    let mut raw = String::from_utf8(sample("html", "outlook_html_inline_image"))
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    raw.extend_from_slice(b"\xff\r\n");
    std::fs::write(wd.path("reply.eml"), &reply).unwrap();
    std::fs::write(wd.path("image.eml"), &raw).unwrap();
    let files = [wd.path("reply.eml"), wd.path("image.eml")];
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    wd.mailticket_db(&[&["import"], &args[..]].concat(), None)
        .success();

    let shown = wd.mailticket_db(&["show", "1"], None).success().stdout;
    assert!(
        shown.contains("It still fails with the same error."),
        "{shown}"
    );
    assert!(!shown.contains("Please try again now."), "{shown}");
    assert!(
        shown.contains("[… 6 lines of quoted history hidden; show --full to see them]"),
        "{shown}"
    );
    let full = wd
        .mailticket_db(&["show", "1", "--full"], None)
        .success()
        .stdout;
    assert!(full.contains("Please try again now."), "{full}");
    assert!(!full.contains("hidden;"), "{full}");

    let v = wd
        .mailticket_db(&["show", "1", "--json"], None)
        .success()
        .json();
    let m = &v["messages"][0];
    assert_eq!(m["text_new"], "It still fails with the same error.\n\nMary");
    assert_eq!(
        (m["quoted_lines"].as_u64(), m["signature_lines"].as_u64()),
        (Some(6), Some(0))
    );
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .contains("Please try again now.")
    );

    // A Message-ID names the ticket; --raw gives the stored bytes back, byte for byte.
    let by_id = wd
        .mailticket_db(&["show", "<h2@customer.example>", "--json"], None)
        .success()
        .json();
    assert_eq!(by_id["id"], 2);
    let a = &by_id["messages"][0]["attachments"][0];
    assert_eq!(
        (a["filename"].as_str(), a["inline"].as_bool()),
        (Some("image001.png"), Some(true))
    );
    for target in ["h2@customer.example", "2"] {
        let out = crate::harness::mailticket_cmd(&wd.path("."))
            .args(["--db", wd.db().to_str().unwrap(), "show", "--raw", target])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stdout == raw,
            "show --raw {target} differs from the imported file"
        );
    }
    // A ticket of several messages needs the one named.
    let follow_up = "From: Mary Jones <mary@customer.example>\nTo: support@example.com\n\
        Subject: RE: Login fails\nMessage-ID: <q10b@customer.example>\n\
        In-Reply-To: <q10@customer.example>\n\nAnd now?\n";
    std::fs::write(wd.path("follow.eml"), follow_up).unwrap();
    let follow = wd.path("follow.eml");
    wd.mailticket_db(&["import", follow.to_str().unwrap()], None)
        .success();
    let two = wd.mailticket_db(&["show", "--raw", "1"], None).code(2);
    assert!(
        two.stderr.contains("ticket 1 names 2 messages")
            && two.stderr.contains("<q10b@customer.example>"),
        "{two:?}"
    );
    // Unknown ids are usage errors (exit 2) that name what was asked for.
    let none = wd
        .mailticket_db(&["show", "--raw", "nobody@example.org"], None)
        .code(2);
    assert!(none.stderr.contains("<nobody@example.org>"), "{none:?}");
}
