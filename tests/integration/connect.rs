//! Connecting and logging in: TLS modes, certificate trust, credentials.

use crate::harness::{Dovecot, Mailbox, Workdir, assert_summary, created, quoted};

/// Three unseen messages, and a mailbox config to fetch them with.
fn server() -> Dovecot {
    let dc = Dovecot::start();
    dc.seed(3, 0, 1);
    dc
}

/// A failed connection must leave the server untouched and the store without tickets.
fn assert_untouched(dc: &Dovecot, wd: &Workdir) {
    assert_eq!(dc.unseen("INBOX"), 3, "nothing may be marked \\Seen");
    let tickets = wd.mailticket_db(&["tickets", "--json"], None);
    // the store may not even exist yet; if it does, it has no tickets
    if tickets.code == Some(0) {
        assert_eq!(tickets.json(), serde_json::json!([]), "{tickets:?}");
    }
}

#[test]
fn implicit_tls_with_the_test_ca() {
    let dc = server();
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(3));
    assert_eq!(dc.unseen("INBOX"), 0);
}

#[test]
fn starttls_on_the_plain_port() {
    let dc = server();
    let mb = Mailbox {
        tls: "starttls".into(),
        port: dc.imap_port,
        ..dc.mailbox()
    };
    let wd = Workdir::with(&[mb]);
    assert_summary(&wd.sync(), created(3));
    assert_eq!(dc.unseen("INBOX"), 0);
}

#[test]
fn untrusted_certificate_fails_naming_the_host() {
    let dc = server();
    let implicit = Mailbox {
        ca_file: None,
        ..dc.mailbox()
    };
    let starttls = Mailbox {
        tls: "starttls".into(),
        port: dc.imap_port,
        ..implicit.clone()
    };
    for mb in [implicit, starttls] {
        let wd = Workdir::with(&[mb]);
        let run = wd.mailticket(&["sync", "--json"]).code(1);
        run.stderr_mentions(&["localhost", "certificate"]);
        assert_untouched(&dc, &wd);
    }
}

#[test]
fn plaintext_needs_allow_insecure() {
    let dc = server();
    let plain = Mailbox {
        tls: "none".into(),
        port: dc.imap_port,
        ca_file: None,
        ..dc.mailbox()
    };
    let wd = Workdir::with(std::slice::from_ref(&plain));
    let run = wd.mailticket(&["sync", "--json"]).code(2);
    run.stderr_mentions(&["allow-insecure"]);
    assert_untouched(&dc, &wd);

    // with the explicit opt-in it works (loopback only, as here)
    wd.write_config(&[Mailbox {
        allow_insecure: true,
        ..plain
    }]);
    assert_summary(&wd.sync(), created(3));
}

#[test]
fn wrong_password_fails_with_an_authentication_error() {
    let dc = server();
    let wd = Workdir::with(&[Mailbox {
        password: quoted("not-the-password"),
        ..dc.mailbox()
    }]);
    let run = wd.mailticket(&["sync", "--json"]).code(1);
    run.stderr_mentions(&["localhost"]);
    let err = run.stderr.to_lowercase();
    assert!(
        err.contains("authentication") || err.contains("login"),
        "stderr names no authentication/login failure: {run:?}"
    );
    assert!(
        !run.stderr.contains("not-the-password"),
        "the password leaked to stderr: {run:?}"
    );
    assert_untouched(&dc, &wd);
}

#[test]
fn the_password_can_come_from_env_file_or_command() {
    let dc = server();
    let wd = Workdir::new();
    let file = wd.path("password");
    std::fs::write(&file, "support-pass\n").unwrap();
    let secrets = [
        r#"{ env = "MT_TEST_IMAP_PASSWORD" }"#.to_owned(),
        format!("{{ file = {} }}", quoted(&file.to_string_lossy())),
        r#"{ command = ["printf", "%s\n", "support-pass"] }"#.to_owned(),
    ];
    for (i, password) in secrets.into_iter().enumerate() {
        wd.write_config(&[Mailbox {
            password: password.clone(),
            ..dc.mailbox()
        }]);
        let mut cmd = wd.cmd(&["sync", "--json"]);
        cmd.env("MT_TEST_IMAP_PASSWORD", "support-pass");
        let run = crate::harness::run(cmd, None).success();
        // the first login takes the backlog; the others prove that they logged in
        let expected = if i == 0 {
            created(3)
        } else {
            Default::default()
        };
        assert_summary(&run.json(), expected);
        assert!(!run.stderr.contains("support-pass"), "{password}: {run:?}");
    }
}

#[test]
fn a_missing_password_variable_is_a_config_error() {
    let dc = server();
    let wd = Workdir::with(&[Mailbox {
        password: r#"{ env = "MT_TEST_UNSET_PASSWORD" }"#.into(),
        ..dc.mailbox()
    }]);
    let run = wd.mailticket(&["sync", "--json"]).code(2);
    run.stderr_mentions(&["MT_TEST_UNSET_PASSWORD"]);
    assert_untouched(&dc, &wd);
}

#[test]
fn a_password_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dc = server();
    let wd = Workdir::new();
    let file = wd.path("password");
    std::fs::write(&file, "support-pass\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    wd.write_config(&[Mailbox {
        password: format!("{{ file = {} }}", quoted(&file.to_string_lossy())),
        ..dc.mailbox()
    }]);
    let warning = "readable by its group or by others";
    let run = wd.mailticket(&["sync", "--json"]).success();
    run.stderr_mentions(&[warning, "644"]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = wd.mailticket(&["sync", "--json"]).success();
    assert!(!run.stderr.contains(warning), "{run:?}");
}
