//! `mailticket events`: the event log in commit order, resumable with `--since`, and
//! `--follow` printing events as they commit.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use crate::harness::Workdir;

pub fn mail(id: &str, reply_to: Option<&str>, body: &str) -> Vec<u8> {
    let irt = reply_to.map_or(String::new(), |p| format!("In-Reply-To: <{p}>\r\n"));
    format!(
        "From: Ann <ann@example.org>\r\nTo: support@example.com\r\nSubject: Printer\r\n\
         Message-ID: <{id}>\r\n{irt}Date: Tue, 1 Dec 2026 05:00:00 +0000\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

fn events(wd: &Workdir, since: i64) -> Vec<Value> {
    let run = wd
        .mailticket_db(&["events", "--json", "--since", &since.to_string()], None)
        .success();
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ingest(wd: &Workdir, raw: &[u8]) {
    wd.mailticket_db(&["ingest"], Some(raw)).success();
}

#[test]
fn events_since_a_cursor_resume_exactly_where_they_stopped() {
    let wd = Workdir::new();
    ingest(&wd, &mail("a1@example.org", None, "first"));
    ingest(&wd, &mail("b1@example.org", None, "second"));
    let first = events(&wd, 0);
    let types: Vec<&str> = first.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ticket.created", "ticket.created"]);
    for e in &first {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'), "{e}");
        assert_eq!(e["data"]["message"]["direction"], "in", "{e}");
    }
    let cursor = first[1]["cursor"].as_i64().unwrap();
    assert!(events(&wd, cursor).is_empty());

    ingest(&wd, &mail("a2@example.org", Some("a1@example.org"), "more"));
    ingest(&wd, &mail("a2@example.org", Some("a1@example.org"), "more"));
    wd.mailticket_db(&["close", "1"], None).success();
    let next = events(&wd, cursor);
    let types: Vec<&str> = next.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ticket.message_added", "ticket.status_changed"]);
    assert_eq!(next[1]["data"]["from"], "open");
    assert_eq!(next[1]["data"]["to"], "closed");
    let all = events(&wd, 0);
    assert_eq!(all.len(), 4);
    assert_eq!(&all[2..], &next[..], "the same events, the same ids");
    let cursors: Vec<i64> = all.iter().map(|e| e["cursor"].as_i64().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
}

#[test]
fn events_follow_prints_new_events_and_stops_on_sigint() {
    let wd = Workdir::new();
    ingest(&wd, &mail("f1@example.org", None, "first"));
    let mut cmd = crate::harness::mailticket_cmd(&wd.dir);
    cmd.arg("--db")
        .arg(wd.db())
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let one: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(one["type"], "ticket.created");
    ingest(&wd, &mail("f2@example.org", None, "second"));
    let two: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(two["type"], "ticket.created");
    assert!(two["cursor"].as_i64() > one["cursor"].as_i64());
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_refused_login_is_mailbox_failing_once_and_a_good_one_recovered() {
    let dc = crate::harness::Dovecot::start();
    let good = dc.mailbox();
    let mut bad = good.clone();
    bad.password = crate::harness::quoted("wrong-password");
    let wd = Workdir::with(std::slice::from_ref(&bad));
    wd.mailticket(&["sync"]).code(1);
    wd.mailticket(&["sync"]).code(1);
    let types = |wd: &Workdir| -> Vec<String> {
        events(wd, 0)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(types(&wd), ["mailbox.failing"]);
    let failing = &events(&wd, 0)[0];
    assert_eq!(failing["data"]["mailbox"], good.name.as_str());
    assert!(
        failing["data"]["error"]
            .as_str()
            .unwrap()
            .contains("authentication"),
        "{failing}"
    );
    wd.write_config(&[good]);
    wd.mailticket(&["sync"]).success();
    wd.mailticket(&["sync"]).success();
    assert_eq!(types(&wd), ["mailbox.failing", "mailbox.recovered"]);
}
