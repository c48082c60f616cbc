//! `mailticket export`: stored messages back out byte for byte (eml), as mboxrd, and tickets
//! as JSON lines.

use crate::harness::{Dovecot, Workdir, assert_summary, created, mailgen};

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn export_writes_back_the_served_bytes_and_the_tickets() {
    let dc = Dovecot::start();
    let sent = [mailgen::one(0, 7, false), mailgen::one(1, 7, true)];
    for m in &sent {
        dc.append("INBOX", m, false);
    }
    let wd = Workdir::with(&[dc.mailbox()]);
    assert_summary(&wd.sync(), created(2));

    let dir = wd.path("out");
    wd.mailticket(&["export", "--out", &dir.to_string_lossy()])
        .success();
    let mut got: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| sha256_hex(&std::fs::read(e.unwrap().path()).unwrap()))
        .collect();
    let mut want: Vec<String> = sent.iter().map(|m| sha256_hex(m)).collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "sha256 of every exported message = what the server served"
    );

    let jsonl = wd.path("t.jsonl");
    wd.mailticket(&[
        "export",
        "--format",
        "jsonl",
        "--ticket",
        "2",
        "--out",
        &jsonl.to_string_lossy(),
    ])
    .success();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0], wd.show(2), "a line is what show --json prints");

    let mbox = wd.path("all.mbox");
    let path = mbox.to_string_lossy().into_owned();
    let to_mbox = || wd.mailticket(&["export", "--format", "mbox", "--out", &path]);
    to_mbox().success();
    let code = "import mailbox, sys\nprint(len(mailbox.mbox(sys.argv[1])))\n";
    let out = crate::harness::python_code(code, &[&path]);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "2");
    to_mbox().code(1); // never overwrites
}
