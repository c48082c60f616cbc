//! `mailticket doctor`: each step checked for real against Dovecot, the failing one named
//! with its fix, and the exit status.

use serde_json::Value;

use crate::harness::{Dovecot, Mailbox, Workdir, quoted};

/// `(step, status)` of every step of SCOPE in a `doctor --json` report.
pub fn steps_of(v: &Value, scope: &str) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["scope"] == scope)
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn doctor_passes_every_step_on_a_good_mailbox() {
    let dc = Dovecot::start();
    let mb = Mailbox {
        after: r#"{ move = "Done" }"#.into(),
        ..dc.mailbox()
    };
    let wd = Workdir::with(&[mb]);
    wd.mailticket(&["sync"]).success();
    let v = wd.mailticket(&["doctor", "--json"]).success().json();
    assert_eq!(v["ok"], true, "{v}");
    let names: Vec<String> = steps_of(&v, "mailbox support")
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(
        names,
        [
            "secret",
            "dns",
            "tcp",
            "tls",
            "login",
            "capabilities",
            "folder",
            "move-target"
        ],
        "{v}"
    );
    assert!(
        steps_of(&v, "store")
            .iter()
            .any(|s| s == &("schema".to_owned(), "ok".to_owned()))
    );
    let text = wd.mailticket(&["doctor"]).success();
    assert!(text.stdout.contains("all checks passed"), "{text:?}");
}

#[test]
fn doctor_names_the_failing_step_and_its_fix() {
    let dc = Dovecot::start_with(&[("IMAP_AUTH_PENALTY", "0")]);
    let wrong_pw = Mailbox {
        name: "wrongpw".into(),
        password: quoted("nope"),
        ..dc.mailbox()
    };
    let no_ca = Mailbox {
        name: "noca".into(),
        ca_file: None,
        ..dc.mailbox()
    };
    let no_folder = Mailbox {
        name: "nofolder".into(),
        folder: "Nowhere".into(),
        ..dc.mailbox()
    };
    let wd = Workdir::with(&[wrong_pw, no_ca, no_folder, dc.mailbox()]);
    let run = wd.mailticket(&["doctor", "--json"]).code(1);
    let v = run.json();
    assert_eq!(v["ok"], false);
    let last = |scope: &str| steps_of(&v, scope).last().cloned().unwrap();
    assert_eq!(
        last("mailbox wrongpw"),
        ("login".into(), "fail".into()),
        "{v}"
    );
    assert_eq!(last("mailbox noca"), ("tls".into(), "fail".into()), "{v}");
    assert_eq!(
        last("mailbox nofolder"),
        ("folder".into(), "fail".into()),
        "{v}"
    );
    assert!(
        steps_of(&v, "mailbox support").iter().all(|s| s.1 == "ok"),
        "{v}"
    );
    let fixes: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "fail")
        .map(|s| s["fix"].as_str().unwrap())
        .collect();
    assert!(fixes.iter().any(|f| f.contains("ca-file")), "{fixes:?}");
    assert!(fixes.iter().any(|f| f.contains("password")), "{fixes:?}");

    let text = wd.mailticket(&["doctor"]).code(1);
    assert!(text.stdout.contains("FAIL mailbox wrongpw"), "{text:?}");
    assert!(text.stdout.contains("3 check(s) failed"), "{text:?}");
    // a broken config is a configuration error
    wd.write_raw_config("[store]\npaht = 1\n");
    let broken = wd.mailticket(&["doctor"]).code(2);
    assert!(broken.stdout.contains("paht"), "{broken:?}");
}
