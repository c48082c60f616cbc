//! `import` (mbox, Maildir, .eml) and `ingest` (stdin) go through the same pipeline as `sync`:
//! the same generated messages give the same tickets as an IMAP sync of them.

use serde_json::Value;

use crate::harness::{Counts, Dovecot, Prng, Workdir, assert_summary, created, huge_mail, mailgen};

const SEED: u32 = 7;
const N: u32 = 30;

/// What must not depend on where a message came from: subject, customer and message count of
/// every ticket, sorted.
fn fingerprint(tickets: &[Value]) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = tickets
        .iter()
        .map(|t| {
            let s = |k: &str| {
                t[k].as_str()
                    .unwrap_or_else(|| panic!("ticket without string {k}: {t}"))
                    .to_owned()
            };
            let n = t["messages"]
                .as_u64()
                .unwrap_or_else(|| panic!("ticket without numeric messages: {t}"));
            (s("subject"), s("customer"), n)
        })
        .collect();
    v.sort();
    v
}

/// The tickets an IMAP sync of the N generated messages gives.
fn synced() -> Vec<(String, String, u64)> {
    let dc = Dovecot::start();
    dc.seed(N, 0, SEED);
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(N.into()));
    let fp = fingerprint(&wd.tickets());
    assert_eq!(fp.len(), N as usize);
    fp
}

/// `tickets` of a store that was filled without any config file.
fn tickets_by_db(wd: &Workdir) -> Vec<Value> {
    crate::harness::tickets_of(wd.mailticket_db(&["tickets", "--status", "all", "--json"], None))
}

/// `import --json PATHS`, which must succeed; checks one summary entry per path.
fn import(wd: &Workdir, paths: &[String]) -> Value {
    let mut args = vec!["import", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let summary = wd.mailticket_db(&args, None).success().json();
    let names: Vec<&str> = summary["mailboxes"]
        .as_array()
        .unwrap_or_else(|| panic!("no mailboxes array: {summary}"))
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default())
        .collect();
    let expected: Vec<&str> = paths.iter().map(String::as_str).collect();
    assert_eq!(names, expected, "one summary entry per path: {summary}");
    assert_eq!(summary["errors"], Value::Array(vec![]), "{summary}");
    summary
}

#[test]
fn import_of_an_mbox_matches_an_imap_sync_and_a_reimport_is_a_no_op() {
    let expected = synced();
    let wd = Workdir::new();
    let mbox = wd.path("support.mbox");
    mailgen::mbox(&mbox, N, SEED);
    let path = mbox.to_string_lossy().into_owned();

    assert_summary(&import(&wd, std::slice::from_ref(&path)), created(N.into()));
    assert_eq!(fingerprint(&tickets_by_db(&wd)), expected);

    let again = Counts {
        fetched: N.into(),
        duplicates: N.into(),
        ..Counts::default()
    };
    assert_summary(&import(&wd, &[path]), again);
    assert_eq!(fingerprint(&tickets_by_db(&wd)), expected);
}

#[test]
fn import_of_a_maildir_matches_an_imap_sync() {
    let expected = synced();
    let wd = Workdir::new();
    let maildir = wd.path("Maildir");
    mailgen::maildir(&maildir, N, SEED);
    let path = maildir.to_string_lossy().into_owned();

    assert_summary(&import(&wd, &[path]), created(N.into()));
    assert_eq!(fingerprint(&tickets_by_db(&wd)), expected);
}

#[test]
fn import_of_eml_files_matches_an_imap_sync() {
    let expected = synced();
    let wd = Workdir::new();
    let paths: Vec<String> = mailgen::many(N, SEED)
        .iter()
        .enumerate()
        .map(|(i, mail)| {
            let p = wd.path(&format!("{i:02}.eml"));
            std::fs::write(&p, mail).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();

    let summary = import(&wd, &paths);
    assert_eq!(Counts::of(&summary), created(N.into()), "{summary}");
    for entry in summary["mailboxes"].as_array().into_iter().flatten() {
        assert_eq!(Counts::of(entry), created(1), "{summary}");
    }
    assert_eq!(fingerprint(&tickets_by_db(&wd)), expected);
}

#[test]
fn ingest_from_stdin_matches_an_imap_sync() {
    let expected = synced();
    let wd = Workdir::new();
    for mail in mailgen::many(N, SEED) {
        wd.mailticket_db(&["ingest"], Some(&mail)).success();
    }
    assert_eq!(fingerprint(&tickets_by_db(&wd)), expected);

    // the same message again is a duplicate, which is fine
    wd.mailticket_db(&["ingest"], Some(&mailgen::one(0, SEED, false)))
        .success();
    assert_eq!(fingerprint(&tickets_by_db(&wd)), expected);
}

#[test]
fn a_large_imported_or_ingested_message_goes_through_a_spool_file_and_is_kept_whole() {
    let wd = Workdir::new();
    let envelope = |mail: &[u8]| {
        let mut m = b"From ola@customer.example Mon Jan  6 10:00:00 2025\n".to_vec();
        m.extend_from_slice(mail);
        m
    };
    // An .eml file with an envelope line; an mbox of a large message and a small one.
    let (mail, size, sha) = huge_mail("big-file@customer.example", 4, 41);
    let eml = wd.path("big.eml");
    std::fs::write(&eml, envelope(&mail)).unwrap();
    let (boxed, boxed_size, boxed_sha) = huge_mail("big-mbox@customer.example", 4, 44);
    let mut mbox = envelope(&boxed);
    mbox.extend_from_slice(b"\n");
    mbox.extend_from_slice(&envelope(&mailgen::one(3, SEED, false)));
    let mbox_path = wd.path("archive.mbox");
    std::fs::write(&mbox_path, &mbox).unwrap();
    for path in [eml, mbox_path] {
        import(&wd, &[path.to_string_lossy().into_owned()]);
    }
    // The same shape on standard input.
    let (piped, piped_size, piped_sha) = huge_mail("big-pipe@customer.example", 4, 42);
    wd.mailticket_db(&["ingest"], Some(&piped)).success();
    wd.assert_spooled_and_kept("big-file@customer.example", &mail, size, &sha);
    wd.assert_spooled_and_kept("big-mbox@customer.example", &boxed, boxed_size, &boxed_sha);
    wd.assert_spooled_and_kept("big-pipe@customer.example", &piped, piped_size, &piped_sha);
    assert_eq!(tickets_by_db(&wd).len(), 4);
    // The same message again is a duplicate.
    wd.mailticket_db(&["ingest"], Some(&piped)).success();
    assert_eq!(tickets_by_db(&wd).len(), 4);
}

#[test]
fn ingest_quarantines_garbage_and_reports_a_broken_store_as_temporary() {
    let wd = Workdir::new();
    wd.mailticket_db(&["ingest"], Some(&Prng::new(0xBAD).bytes(2048)))
        .success();
    let q = wd
        .mailticket_db(&["quarantine", "--json"], None)
        .success()
        .json();
    assert_eq!(q.as_array().map(Vec::len), Some(1), "{q}");
    assert!(tickets_by_db(&wd).is_empty());

    // a store that cannot be opened (its "directory" is a file): try again later
    let file = wd.path("not-a-directory");
    std::fs::write(&file, b"").unwrap();
    let mut cmd = crate::harness::mailticket_cmd(&wd.dir);
    cmd.arg("--db").arg(file.join("store.db")).arg("ingest");
    let run = crate::harness::run(cmd, Some(&mailgen::one(0, SEED, false)));
    let run = run.code(75);
    assert!(!run.stderr.trim().is_empty(), "{run:?}");
}

#[test]
fn a_quarantined_import_names_its_file_inside_the_folder() {
    let wd = Workdir::new();
    let dir = wd.path("mail");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("good.eml"), mailgen::one(1, SEED, false)).unwrap();
    std::fs::write(dir.join("sub/broken.eml"), Prng::new(0xBAD).bytes(2048)).unwrap();
    let run = wd
        .mailticket_db(&["import", dir.to_str().unwrap()], None)
        .success();
    assert!(run.stderr.contains("sub/broken.eml"), "{}", run.stderr);
    let q = wd
        .mailticket_db(&["quarantine", "--json"], None)
        .success()
        .json();
    let source = q[0]["source"].as_str().unwrap_or_default();
    assert!(source.ends_with("mail/sub/broken.eml"), "{q}");
}

#[test]
fn a_letter_quoting_an_mbox_is_one_message_and_a_leading_blank_line_or_bom_is_skipped() {
    let wd = Workdir::new();
    let letter = "From anna@client.example Tue Apr  1 09:00:00 2025\n\
        From: Anna <anna@client.example>\nTo: support@example.com\nSubject: Odd mbox\n\
        Message-ID: <odd-mbox@client.example>\n\n\
        Our archive has this line in it:\n\n\
        From MAILER-DAEMON Tue Apr  1 08:00:00 2025\n\
        and then nothing. Why?\n";
    let quoting = "From: Ben <ben@client.example>\nTo: support@example.com\n\
        Subject: Quoted mail\nMessage-ID: <quoted@client.example>\n\nSee below.\n\n\
        From carl@client.example Tue Apr  1 07:00:00 2025\nSubject: the original\n\nhi\n";
    let paths: Vec<String> = [
        ("letter", letter.as_bytes().to_vec()),
        (
            "quoting.eml",
            format!("From ben Tue Apr  1 09:00:00 2025\n{quoting}").into_bytes(),
        ),
        (
            "blank.eml",
            [&b"\r\n \r\n"[..], &mailgen::one(1, SEED, false)].concat(),
        ),
        (
            "bom.eml",
            [&b"\xEF\xBB\xBF"[..], &mailgen::one(2, SEED, false)].concat(),
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        let p = wd.path(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    })
    .collect();
    let summary = import(&wd, &paths);
    for entry in summary["mailboxes"].as_array().into_iter().flatten() {
        assert_eq!(Counts::of(entry), created(1), "{summary}");
    }
    let subjects: Vec<String> = tickets_by_db(&wd)
        .iter()
        .map(|t| t["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(subjects.contains(&"Odd mbox".to_owned()), "{subjects:?}");
    assert!(subjects.contains(&"Quoted mail".to_owned()), "{subjects:?}");
    assert!(subjects.iter().all(|s| !s.is_empty()), "{subjects:?}");
    // `show --json` names the file a message came from.
    let shown = wd
        .mailticket_db(&["show", "1", "--json"], None)
        .success()
        .json();
    let origin = &shown["messages"][0]["origin"];
    assert_eq!(origin["file"].as_str(), Some(paths[0].as_str()), "{shown}");
    assert_eq!(origin["source"], format!("import:{}", paths[0]), "{shown}");
}
