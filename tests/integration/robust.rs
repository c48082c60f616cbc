//! Rough edges a new user hits: reading commands against a mistyped, read-only or missing
//! store, messages that must name what is wrong (and never print Rust internals), TLS modes
//! pointed at the wrong port.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::{Dovecot, Mailbox, Workdir, mailticket_cmd, quoted, run, simple_mail};
use crate::sink::Sink;

/// Every command that only reads the store, with its arguments.
fn reading_commands(out: &Path) -> Vec<Vec<String>> {
    let out = out.to_string_lossy().into_owned();
    [
        &["tickets"][..],
        &["show", "1"],
        &["quarantine"],
        &["events"],
        &["export", "--format", "jsonl", "--out", &out],
        &["outbox"],
        &["hooks"],
    ]
    .iter()
    .map(|a| a.iter().map(|s| (*s).to_owned()).collect())
    .collect()
}

fn mailticket_with_db(wd: &Workdir, db: &Path, args: &[String]) -> crate::harness::Run {
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--db").arg(db).args(args);
    run(cmd, None)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The names in DIR, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_mistyped_db_is_an_error_naming_it_and_creates_nothing() {
    let wd = Workdir::new();
    let db = wd.path("typo/mailticket.db");
    for args in reading_commands(&wd.path("out.jsonl")) {
        let r = mailticket_with_db(&wd, &db, &args).code(2);
        r.stderr_mentions(&[
            &format!("no store at {}", db.display()),
            "mailticket sync",
            "--db",
        ]);
        assert_eq!(
            r.stderr.matches("error").count(),
            1,
            "{args:?}: the error is printed once: {r:?}"
        );
        assert!(!wd.path("typo").exists(), "{args:?} created the folder");
        assert!(!wd.path("out.jsonl").exists(), "{args:?} wrote its output");
    }
}

#[test]
fn a_db_that_is_a_folder_says_so() {
    let wd = Workdir::new();
    let dir = wd.path("data");
    std::fs::create_dir(&dir).unwrap();
    for args in [vec!["tickets".to_owned()], vec!["close".into(), "1".into()]] {
        let r = mailticket_with_db(&wd, &dir, &args).code(2);
        r.stderr_mentions(&[&format!("{} is a folder", dir.display()), "mailticket.db"]);
    }
    // doctor goes on to the store with a config that has no mailbox
    wd.write_raw_config("[store]\n");
    let doctor = mailticket_with_db(&wd, &dir, &["doctor".to_owned()]);
    assert!(
        doctor
            .stdout
            .contains(&format!("{} is a folder", dir.display())),
        "{doctor:?}"
    );
    assert!(
        names_in(&dir).is_empty(),
        "nothing was created in the folder"
    );
}

#[test]
fn doctor_reads_the_store_without_leaving_wal_files() {
    let wd = Workdir::new();
    let dir = wd.path("s");
    let db = store_with_a_ticket(&wd, &dir);
    let before = names_in(&dir);
    assert_eq!(before, ["store.db"]);
    wd.write_raw_config("[store]\n");
    let r = mailticket_with_db(&wd, &db, &["doctor".to_owned()]);
    assert!(r.stdout.contains("schema"), "{r:?}");
    let after: Vec<String> = names_in(&dir)
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(after, before, "{r:?}");
}

#[test]
fn a_broken_config_in_the_working_directory_does_not_stop_reading_a_named_db() {
    let wd = Workdir::new();
    drop(mailticket::store::Store::open(&wd.db()).unwrap());
    wd.write_raw_config("[store\nbroken");
    let r = wd.mailticket_db(&["tickets", "--json"], None).success();
    assert_eq!(r.json(), serde_json::json!([]));
    r.stderr_mentions(&["config ignored"]);
    // A writing command still needs its config, and says what is wrong with it.
    wd.mailticket_db(&["close", "1"], None)
        .code(2)
        .stderr_mentions(&["mailticket.toml"]);
    // So does a reading command whose config was named.
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--config")
        .arg(wd.config())
        .arg("--db")
        .arg(wd.db());
    cmd.arg("tickets");
    run(cmd, None).code(2).stderr_mentions(&["mailticket.toml"]);
}

/// `mailticket --db DB ARGS` as a user who may read DB but not write it: `nobody` when the
/// tests run as root (root may write anything), else the current user.
fn as_reader(wd: &Workdir, db: &Path, args: &[&str]) -> crate::harness::Run {
    let uid = Command::new("id").arg("-u").output().unwrap();
    let mut cmd = if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(env!("CARGO_BIN_EXE_mailticket"));
        c.current_dir(&wd.dir).env_remove("MAILTICKET_CONFIG");
        c
    } else {
        mailticket_cmd(&wd.dir)
    };
    cmd.arg("--db").arg(db).args(args);
    run(cmd, None)
}

/// A store in its own folder DIR holding one ticket (imported), readable by everyone.
fn store_with_a_ticket(wd: &Workdir, dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir(dir).unwrap();
    chmod(dir, 0o755);
    let db = dir.join("store.db");
    import_one(wd, &db, "Ann <ann@example.org>", "Printer");
    db
}

/// `mailticket --db DB import` of one message from FROM about SUBJECT.
fn import_one(wd: &Workdir, db: &Path, from: &str, subject: &str) {
    let mail = wd.path(&format!("{subject}.eml"));
    let id = format!("{subject}@example.org");
    std::fs::write(&mail, simple_mail(from, &id, subject, "")).unwrap();
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--db").arg(db).arg("import").arg(&mail);
    run(cmd, None).success();
}

fn chmod_store(db: &Path, mode: u32) {
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if p.exists() {
            chmod(&p, mode);
        }
    }
}

#[test]
fn a_read_only_store_is_read_without_writing_to_it() {
    let wd = Workdir::new();
    // A read-only file in a folder the reader may write; then a read-only folder too.
    let dir = wd.path("ro");
    let db = store_with_a_ticket(&wd, &dir);
    chmod_store(&db, 0o444);
    for folder_mode in [0o777, 0o555] {
        chmod(&dir, folder_mode);
        for (args, shows) in [
            (&["tickets", "--json"][..], "Printer"),
            (&["show", "1", "--json"], "Printer"),
            (&["events"], "ticket.created"),
        ] {
            let r = as_reader(&wd, &db, args).success();
            assert!(!r.stderr.contains("readonly"), "{args:?}: {r:?}");
            assert!(r.stdout.contains(shows), "{args:?}: {r:?}");
            assert_eq!(names_in(&dir), ["store.db"], "{args:?} left files behind");
        }
    }
    chmod(&dir, 0o755);
}

#[test]
fn a_read_only_store_being_written_shows_what_is_in_its_wal() {
    let wd = Workdir::new();
    let dir = wd.path("live");
    let db = store_with_a_ticket(&wd, &dir);
    // A writer keeps the store open (its WAL files stay), and a second ticket is committed
    // into the WAL while it does.
    let writer = mailticket::store::Store::open(&db).unwrap();
    import_one(&wd, &db, "Bo <bo@example.org>", "Scanner");
    assert!(names_in(&dir).contains(&"store.db-wal".to_owned()));
    chmod_store(&db, 0o644);
    chmod(&dir, 0o555);
    let r = as_reader(&wd, &db, &["tickets", "--json"]).success();
    assert!(
        r.stdout.contains("Printer") && r.stdout.contains("Scanner"),
        "{r:?}"
    );
    chmod(&dir, 0o755);
    drop(writer);
}

#[test]
fn a_secret_in_none_of_its_forms_lists_the_four_forms() {
    let wd = Workdir::with(&[Mailbox {
        password: r#"{ evn = "SUPPORT_PW" }"#.into(),
        ..Mailbox::plain(1)
    }]);
    let r = wd.mailticket(&["sync"]).code(2);
    r.stderr_mentions(&[
        "unknown key `evn`",
        "the secret itself",
        "{ env =",
        "{ file =",
        "{ command =",
        &wd.config().to_string_lossy(),
    ]);
    assert!(!r.stderr.contains("untagged"), "{r:?}");
}

#[test]
fn an_unknown_folder_is_named_with_what_the_server_said() {
    let dc = Dovecot::start();
    let wd = Workdir::with(&[Mailbox {
        folder: "Nowhere".into(),
        ..dc.mailbox()
    }]);
    let r = wd.mailticket(&["sync"]).code(1);
    r.stderr_mentions(&["cannot select folder \"Nowhere\"", "doesn't exist"]);
    for internal in ["Outcome", "Some(", "code:"] {
        assert!(!r.stderr.contains(internal), "{internal}: {r:?}");
    }
}

#[test]
fn a_template_error_names_the_key_the_line_and_the_undefined_field() {
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n[smtp]\nhost = '127.0.0.1'\nport = 1\ntls = 'none'\n\
         allow-insecure = true\nfrom = 'support@example.com'\n[ack]\nenabled = true\n\
         body = \"\"\"Hello,\n\nabout {{{{ ticket.subjct }}}}\"\"\"\n",
        quoted(&wd.db().to_string_lossy())
    ));
    let r = wd.mailticket(&["sync"]).code(2);
    r.stderr_mentions(&[
        "[ack]",
        "body, line 3",
        "undefined value `ticket.subjct`",
        "ticket.subject",
        &wd.config().to_string_lossy(),
    ]);
}

#[test]
fn doctor_says_what_a_missing_ca_file_needs_without_talking_of_ports() {
    let dc = Dovecot::start();
    let wd = Workdir::with(&[Mailbox {
        ca_file: Some(wd_missing()),
        ..dc.mailbox()
    }]);
    let v = wd.mailticket(&["doctor", "--json"]).code(1).json();
    let tls = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "tls")
        .unwrap_or_else(|| panic!("no tls step: {v}"));
    assert_eq!(tls["status"], "fail", "{v}");
    let fix = tls["fix"].as_str().unwrap();
    assert!(fix.contains("ca-file") && fix.contains("PEM"), "{fix}");
    assert!(!fix.contains("port") && !fix.contains("993"), "{fix}");
}

fn wd_missing() -> std::path::PathBuf {
    std::path::PathBuf::from("/nonexistent/mailticket-test-ca.pem")
}

/// `sync` of MB must fail within 5 s, with stderr mentioning NEEDLES.
fn fails_fast_saying(mb: Mailbox, needles: &[&str]) {
    let wd = Workdir::with(&[mb]);
    let started = std::time::Instant::now();
    let r = wd.mailticket(&["sync"]).code(1);
    let took = started.elapsed();
    r.stderr_mentions(needles);
    assert!(
        took < std::time::Duration::from_secs(5),
        "took {took:?}: {r:?}"
    );
}

#[test]
fn starttls_pointed_at_the_implicit_tls_port_says_so_at_once() {
    let dc = Dovecot::start();
    let port = dc.imaps_port;
    fails_fast_saying(
        Mailbox {
            tls: "starttls".into(),
            ..dc.mailbox()
        },
        &[
            &format!("localhost:{port}: speaks implicit TLS"),
            "tls = \"implicit\"",
        ],
    );
}

#[test]
fn implicit_tls_pointed_at_the_plain_text_port_says_so_at_once() {
    let dc = Dovecot::start();
    let port = dc.imap_port;
    fails_fast_saying(
        Mailbox {
            port,
            ..dc.mailbox()
        },
        &[
            &format!("localhost:{port}: answered in plain text"),
            "tls = \"starttls\"",
        ],
    );
    // The right pairs still work.
    let wd = Workdir::with(&[Mailbox {
        port,
        tls: "starttls".into(),
        ..dc.mailbox()
    }]);
    wd.mailticket(&["sync"]).success();
}

/// `doctor --json` with only this `[smtp]` table: the SMTP step's error, in under 5 s.
fn smtp_doctor_error(smtp: &str) -> String {
    let wd = Workdir::new();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n{smtp}",
        quoted(&wd.db().to_string_lossy())
    ));
    let started = std::time::Instant::now();
    let r = wd.mailticket(&["doctor", "--json"]);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "took {took:?}: {r:?}"
    );
    let v = r.json();
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scope"] == "smtp" && s["step"] == "connect")
        .unwrap_or_else(|| panic!("no smtp connect step: {v}"))
        .clone();
    if step["status"] == "ok" {
        return String::new();
    }
    step["detail"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn smtp_with_the_wrong_tls_mode_for_the_port_says_so_at_once() {
    let sink = Sink::start();
    let starttls = sink.smtp_toml();
    let on_tls_port = starttls.replace(
        &format!("port = {}", sink.port),
        &format!("port = {}", sink.tls_port),
    );
    let e = smtp_doctor_error(&on_tls_port);
    assert!(
        e.contains(&format!("localhost:{}: speaks implicit TLS", sink.tls_port))
            && e.contains("tls = \"implicit\""),
        "{e}"
    );
    let implicit_on_plain_port = starttls.replace("tls = \"starttls\"", "tls = \"implicit\"");
    let e = smtp_doctor_error(&implicit_on_plain_port);
    assert!(
        e.contains(&format!("localhost:{}", sink.port))
            && e.contains("answered in plain text")
            && e.contains("tls = \"starttls\""),
        "{e}"
    );
    // The right pairs pass.
    assert_eq!(smtp_doctor_error(&starttls), "");
    let implicit = on_tls_port.replace("tls = \"starttls\"", "tls = \"implicit\"");
    assert_eq!(smtp_doctor_error(&implicit), "");
}

#[test]
fn smtp_and_imap_trust_the_same_roots_and_read_ca_file_alike() {
    let (dc, sink) = (Dovecot::start(), Sink::start());
    // The system's roots (SSL_CERT_FILE holds the test CAs): no ca-file needed by either.
    let wd = Workdir::new();
    let both = wd.path("roots.pem");
    let pem = [dc.ca_file(), sink.ca_file()]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&both, pem).unwrap();
    let no_ca = |toml: &str| -> String {
        toml.lines()
            .filter(|l| !l.starts_with("ca-file"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let mailbox = no_ca(
        &Mailbox {
            ca_file: None,
            ..dc.mailbox()
        }
        .toml(),
    );
    let smtp = no_ca(&sink.smtp_toml());
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n{mailbox}\n{smtp}",
        quoted(&wd.db().to_string_lossy())
    ));
    let mut cmd = wd.cmd(&["doctor", "--json"]);
    cmd.env("SSL_CERT_FILE", &both);
    let v = run(cmd, None).success().json();
    assert_eq!(v["ok"], true, "{v}");

    // A ca-file without a certificate is the same error for both.
    let junk = wd.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk_line = format!("ca-file = {}\n", quoted(&junk.to_string_lossy()));
    let smtp = sink.smtp_toml().replace(
        &format!("ca-file = {}\n", quoted(&sink.ca_file().to_string_lossy())),
        &junk_line,
    );
    let mailbox = Mailbox {
        ca_file: Some(junk.clone()),
        ..dc.mailbox()
    }
    .toml();
    wd.write_raw_config(&format!(
        "[store]\npath = {}\n{mailbox}\n{smtp}",
        quoted(&wd.db().to_string_lossy())
    ));
    let v = wd.mailticket(&["doctor", "--json"]).code(1).json();
    for scope in ["smtp", "mailbox support"] {
        let failed = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scope"] == scope && s["status"] == "fail")
            .unwrap_or_else(|| panic!("{scope} did not fail: {v}"));
        let detail = failed["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("ca-file {}: no PEM certificate", junk.display())),
            "{scope}: {detail}"
        );
    }
}
