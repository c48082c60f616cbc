//! `mailticket sync` against a real Dovecot: backlog, cursor, threading, post-actions,
//! UIDVALIDITY changes and quarantine.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{
    Counts, Dovecot, Mailbox, Prng, Workdir, assert_rfc3339, assert_summary, created, id_of,
    mailgen, quoted, simple_mail,
};

/// The Message-IDs of FOLDER's messages, as a set.
fn server_ids(dc: &Dovecot, folder: &str) -> BTreeSet<String> {
    dc.messages(folder)
        .into_iter()
        .map(|m| m.message_id)
        .collect()
}

fn as_set(ids: Vec<String>) -> BTreeSet<String> {
    let n = ids.len();
    let set: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(set.len(), n, "a Message-ID is in the store twice");
    set
}

#[test]
fn backlog_of_200_unseen_becomes_200_tickets_and_is_marked_seen() {
    let dc = Dovecot::start();
    dc.seed(200, 0, 2);
    let wd = Workdir::with(&[dc.mailbox()]);

    let summary = wd.sync();
    assert_summary(&summary, created(200));
    let mb = &summary["mailboxes"][0];
    assert_eq!(mb["name"], "support", "{summary}");
    assert_eq!(mb["folder"], "INBOX", "{summary}");

    let tickets = wd.tickets();
    assert_eq!(tickets.len(), 200);
    for t in &tickets {
        assert_eq!(t["status"], "open", "{t}");
        assert_eq!(t["messages"], 1, "{t}");
    }
    let ids: BTreeSet<u64> = tickets.iter().map(id_of).collect();
    assert_eq!(ids.len(), 200, "ticket ids are unique");
    // ~30% of the generated mail are replies ("Re: ...") to unknown messages: new tickets,
    // with the reply prefix stripped for display
    for t in &tickets {
        let subject = t["subject"].as_str().unwrap_or_default();
        assert!(!subject.is_empty() && !subject.starts_with("Re:"), "{t}");
    }

    assert_eq!(dc.count("INBOX"), 200, "after = seen keeps the messages");
    assert_eq!(dc.unseen("INBOX"), 0, "every message is \\Seen");
}

#[test]
fn a_rerun_creates_nothing() {
    let dc = Dovecot::start();
    dc.seed(20, 0, 3);
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(20));
    assert_summary(&wd.sync(), Counts::default());
    assert_eq!(wd.tickets().len(), 20);
}

#[test]
fn seen_before_the_first_run_is_skipped_but_seen_later_is_ticketed() {
    let dc = Dovecot::start();
    dc.seed(10, 0, 4);
    dc.add_seen("INBOX", "1:3");
    let unseen: BTreeSet<String> = dc
        .messages("INBOX")
        .into_iter()
        .filter(|m| !m.seen())
        .map(|m| m.message_id)
        .collect();
    assert_eq!(unseen.len(), 7);
    let wd = Workdir::with(&[dc.mailbox()]);

    // first run: the unseen backlog only
    assert_summary(&wd.sync(), created(7));
    assert_eq!(as_set(wd.ticketed_message_ids()), unseen);

    // later runs: everything above the cursor, even if someone already read it
    let late = simple_mail(
        "Read Early <early@customer.example>",
        "already-read-1@customer.example",
        "Opened in Outlook before the poll",
        "",
    );
    dc.append("INBOX", &late, true);
    assert_summary(&wd.sync(), created(1));
    let mut expected = unseen;
    expected.insert("already-read-1@customer.example".into());
    assert_eq!(as_set(wd.ticketed_message_ids()), expected);
    let subjects: Vec<Value> = wd
        .tickets()
        .into_iter()
        .map(|t| t["subject"].clone())
        .collect();
    assert!(
        subjects.contains(&Value::from("Opened in Outlook before the poll")),
        "{subjects:?}"
    );
}

#[test]
fn replies_by_in_reply_to_and_by_references_join_the_parent_ticket() {
    let dc = Dovecot::start();
    let wd = Workdir::with(&[dc.mailbox()]);
    let parent = "parent-1@customer.example";
    dc.append(
        "INBOX",
        &simple_mail(
            "Alice <alice@customer.example>",
            parent,
            "Printer on fire",
            "",
        ),
        false,
    );
    dc.append(
        "INBOX",
        &simple_mail(
            "Alice <alice@customer.example>",
            "reply-1@customer.example",
            "Re: Printer on fire",
            &format!("In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n"),
        ),
        false,
    );
    // parent and first reply in one pass: UID order puts the parent first
    assert_summary(
        &wd.sync(),
        Counts {
            fetched: 2,
            created: 1,
            threaded: 1,
            ..Counts::default()
        },
    );

    // References only (an unknown id first), another sender, an unrelated subject
    dc.append(
        "INBOX",
        &simple_mail(
            "Bob <bob@customer.example>",
            "reply-2@customer.example",
            "Any news?",
            &format!("References: <unknown-0@elsewhere.example> <{parent}>\r\n"),
        ),
        false,
    );
    assert_summary(
        &wd.sync(),
        Counts {
            fetched: 1,
            threaded: 1,
            ..Counts::default()
        },
    );

    let tickets = wd.tickets();
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    assert_eq!(tickets[0]["messages"], 3, "{:?}", tickets[0]);
    let shown = wd.show(id_of(&tickets[0]));
    let ids: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {shown}"))
        .iter()
        .map(|m| m["message_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        [
            parent,
            "reply-1@customer.example",
            "reply-2@customer.example"
        ],
        "{shown}"
    );
    // Each message says where it came from: the mailbox, the folder and its UID there.
    let origins: Vec<&Value> = shown["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| &m["origin"])
        .collect();
    for o in &origins {
        assert_eq!(o["source"], "imap:support/INBOX", "{o}");
        assert_eq!(o["mailbox"], "support", "{o}");
        assert_eq!(o["folder"], "INBOX", "{o}");
        assert!(o["uidvalidity"].as_u64().is_some_and(|v| v > 0), "{o}");
    }
    let uids: BTreeSet<u64> = origins.iter().filter_map(|o| o["uid"].as_u64()).collect();
    assert_eq!(uids.len(), 3, "{shown}");
}

#[test]
fn after_move_creates_the_folder_and_moves_processed_messages_into_it() {
    let dc = Dovecot::start();
    dc.seed(10, 0, 5);
    // "Processed" does not exist yet: mailticket creates it
    let seeded = server_ids(&dc, "INBOX");
    let wd = Workdir::with(&[Mailbox {
        after: r#"{ move = "Processed" }"#.into(),
        ..dc.mailbox()
    }]);

    assert_summary(&wd.sync(), created(10));
    assert_eq!(dc.count("INBOX"), 0, "INBOX is empty after the move");
    assert_eq!(dc.count("Processed"), 10);
    assert_eq!(server_ids(&dc, "Processed"), seeded);
    assert_eq!(as_set(wd.ticketed_message_ids()), seeded);

    assert_summary(&wd.sync(), Counts::default());
    assert_eq!(dc.count("Processed"), 10);
}

#[test]
fn after_delete_empties_the_inbox() {
    let dc = Dovecot::start();
    dc.seed(10, 0, 6);
    let seeded = server_ids(&dc, "INBOX");
    let wd = Workdir::with(&[Mailbox {
        after: r#""delete""#.into(),
        ..dc.mailbox()
    }]);

    assert_summary(&wd.sync(), created(10));
    assert_eq!(
        dc.count("INBOX"),
        0,
        "INBOX is empty after delete + expunge"
    );
    assert_eq!(as_set(wd.ticketed_message_ids()), seeded);
    assert_summary(&wd.sync(), Counts::default());
}

#[test]
fn a_new_uidvalidity_rescans_and_dedupes_by_message_id() {
    let dc = Dovecot::start();
    dc.seed(20, 0, 7);
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(20));
    let before = dc.uidvalidity();

    dc.reset();
    dc.seed(20, 0, 7);
    assert_ne!(dc.uidvalidity(), before);
    assert_eq!(dc.unseen("INBOX"), 20);

    assert_summary(
        &wd.sync(),
        Counts {
            fetched: 20,
            duplicates: 20,
            ..Counts::default()
        },
    );
    assert_eq!(wd.tickets().len(), 20);
    assert_eq!(
        dc.unseen("INBOX"),
        0,
        "duplicates are handled messages: they get the post-action too"
    );
}

#[test]
fn a_garbage_message_is_quarantined_and_the_others_are_ticketed() {
    let dc = Dovecot::start();
    let garbage = Prng::new(0xBAD).bytes(2048);
    dc.append("INBOX", &mailgen::one(0, 8, false), false);
    dc.append("INBOX", &garbage, false);
    dc.append("INBOX", &mailgen::one(1, 8, false), false);
    let good: BTreeSet<String> = [0, 2]
        .map(|i| dc.messages("INBOX")[i].message_id.clone())
        .into();
    let wd = Workdir::with(&[dc.mailbox()]);

    assert_summary(
        &wd.sync(),
        Counts {
            fetched: 3,
            created: 2,
            quarantined: 1,
            ..Counts::default()
        },
    );
    assert_eq!(as_set(wd.ticketed_message_ids()), good);
    assert_eq!(
        dc.unseen("INBOX"),
        0,
        "a quarantined message counts as handled"
    );

    let q = wd.mailticket(&["quarantine", "--json"]).success().json();
    let entries = q.as_array().unwrap_or_else(|| panic!("not an array: {q}"));
    assert_eq!(entries.len(), 1, "{q}");
    let e = &entries[0];
    assert!(e["id"].is_u64(), "{e}");
    assert!(e["source"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    assert_eq!(e["uid"], 2, "{e}");
    assert!(e["error"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    assert!(e["size"].as_u64().is_some_and(|n| n >= 2048), "{e}");
    assert_rfc3339(&e["received_at"]);

    // handled means handled: a rerun does not quarantine it again
    assert_summary(&wd.sync(), Counts::default());
    let q = wd.mailticket(&["quarantine", "--json"]).success().json();
    assert_eq!(q.as_array().map(Vec::len), Some(1), "{q}");
}

#[test]
fn a_failing_mailbox_does_not_stop_the_others() {
    let dc = Dovecot::start();
    dc.seed(5, 0, 9);
    dc.seed_user("alice", 4, 0, 10);
    let broken = Mailbox {
        password: quoted("wrong"),
        ..dc.mailbox_of("alice")
    };
    // the broken one first: a failure must not end the run
    let wd = Workdir::with(&[broken, dc.mailbox()]);
    let run = wd.mailticket(&["sync", "--json"]).code(1);
    let summary = run.json();
    assert!(
        summary["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{run:?}"
    );
    let boxes = summary["mailboxes"].as_array().cloned().unwrap_or_default();
    assert_eq!(boxes.len(), 2, "{run:?}");
    assert_eq!(boxes[0]["name"], "alice", "{run:?}");
    assert!(
        boxes[0]["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{run:?}"
    );
    assert_eq!(boxes[1]["name"], "support", "{run:?}");
    assert_eq!(Counts::of(&boxes[1]), created(5), "{run:?}");
    assert_eq!(wd.tickets().len(), 5);
    assert_eq!(dc.unseen("INBOX"), 0);
    assert_eq!(
        dc.unseen_of("alice", "INBOX"),
        4,
        "alice's mail is untouched"
    );
}

#[test]
fn mailbox_option_syncs_only_the_named_mailboxes() {
    let dc = Dovecot::start();
    dc.seed(5, 0, 9);
    dc.seed_user("alice", 4, 0, 10);
    let wd = Workdir::with(&[dc.mailbox(), dc.mailbox_of("alice")]);

    let summary = wd
        .mailticket(&["sync", "--json", "--mailbox", "alice"])
        .success()
        .json();
    assert_summary(&summary, created(4));
    assert_eq!(summary["mailboxes"][0]["name"], "alice", "{summary}");
    assert_eq!(dc.unseen("INBOX"), 5, "support was not synced");
    assert_eq!(dc.unseen_of("alice", "INBOX"), 0);

    // an unknown name is the user's mistake
    let run = wd.mailticket(&["sync", "--mailbox", "nobody"]).code(2);
    run.stderr_mentions(&["nobody"]);

    let summary = wd.sync();
    assert_eq!(Counts::of(&summary), created(5), "{summary}");
    assert_eq!(wd.tickets().len(), 9);
}

#[test]
fn dry_run_changes_neither_the_store_nor_the_server() {
    let dc = Dovecot::start();
    dc.seed(6, 0, 12);
    let wd = Workdir::with(&[dc.mailbox()]);
    wd.mailticket(&["sync", "--dry-run", "--json"])
        .success()
        .json();
    assert!(wd.tickets().is_empty(), "a dry run created tickets");
    assert_eq!(dc.unseen("INBOX"), 6, "a dry run touched flags");

    assert_summary(&wd.sync(), created(6));
}

#[test]
fn a_subject_tag_threads_only_mail_from_participants() {
    // through `ingest`: threading is the same pipeline whatever the source
    let wd = Workdir::new();
    let ingest = |mail: Vec<u8>| wd.mailticket_db(&["ingest"], Some(&mail)).success();
    ingest(simple_mail(
        "Alice <alice@customer.example>",
        "tag-parent@customer.example",
        "Invoice wrong",
        "",
    ));
    let tickets = crate::harness::tickets_of(wd.mailticket_db(&["tickets", "--json"], None));
    assert_eq!(tickets.len(), 1);
    let id = id_of(&tickets[0]);

    // no In-Reply-To/References, only the tag: the customer's own follow-up joins the ticket
    ingest(simple_mail(
        "Alice <alice@customer.example>",
        "tag-reply@customer.example",
        &format!("AW: [#{id}] Invoice wrong"),
        "",
    ));
    // a stranger quoting the tag gets a ticket of their own
    ingest(simple_mail(
        "Mallory <mallory@elsewhere.example>",
        "tag-stranger@elsewhere.example",
        &format!("[#{id}] Invoice wrong"),
        "",
    ));

    let tickets = crate::harness::tickets_of(wd.mailticket_db(&["tickets", "--json"], None));
    assert_eq!(tickets.len(), 2, "{tickets:?}");
    let first = tickets.iter().find(|t| id_of(t) == id).unwrap();
    assert_eq!(first["messages"], 2, "{first}");
    assert_eq!(first["subject"], "Invoice wrong", "{first}");
}

#[test]
fn a_dry_run_in_progress_blocks_no_writer() {
    // A server that accepts the connection and never says a word: the dry run waits for its
    // greeting (up to its timeout) with the store open.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let mb = Mailbox::plain(silent.local_addr().unwrap().port());
    let wd = Workdir::new();
    wd.write_config(&[mb]);
    let config = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&(config + "timeout = 45\n"));
    // A store with a ticket in it already, as in real life.
    let first = simple_mail("Anna <anna@customer.example>", "d0@x", "First", "");
    wd.mailticket_db(&["ingest"], Some(&first)).success();

    let mut dry = crate::harness::spawn(wd.cmd(&["sync", "--dry-run"]));
    let mut conn = None;
    crate::harness::wait_until(
        std::time::Duration::from_secs(20),
        "the dry run to connect",
        || {
            conn = silent.accept().ok();
            conn.is_some()
        },
    );
    let start = std::time::Instant::now();
    let mail = simple_mail("Bob <bob@customer.example>", "d1@x", "Beside a dry run", "");
    let run = wd.mailticket_db(&["ingest"], Some(&mail));
    let took = start.elapsed();
    let _ = dry.kill();
    let _ = dry.wait();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(wd.tickets().len(), 2);
}

#[test]
fn a_dry_run_judges_against_what_the_store_holds() {
    let dc = Dovecot::start();
    let anna = "Anna <anna@customer.example>";
    dc.append("INBOX", &simple_mail(anna, "q1@x", "Question", ""), false);
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(1));
    let reply = simple_mail(anna, "q2@x", "Re: Question", "In-Reply-To: <q1@x>\r\n");
    dc.append("INBOX", &reply, false);
    let dry = wd
        .mailticket(&["sync", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(dry["threaded"], 1, "{dry}");
    assert_eq!(dry["created"], 0, "{dry}");
    assert_eq!(wd.show(1)["messages"].as_array().unwrap().len(), 1);
    let real = wd.sync();
    assert_eq!(real["threaded"], 1, "{real}");
}
