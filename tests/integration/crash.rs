//! Exactly once under `kill -9`: a sync killed at random moments, again and again, with
//! acknowledgements on, then run to the end, has ticketed every message exactly once and
//! delivered no acknowledgement twice.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::{Dovecot, Prng, Workdir, spawn};
use crate::sink::Sink;

const KILLS: usize = 20;

#[test]
fn sync_killed_at_random_moments_loses_and_duplicates_nothing() {
    let dc = Dovecot::start();
    dc.seed(250, 50, 11);
    let on_server: BTreeSet<String> = dc
        .messages("INBOX")
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    assert_eq!(on_server.len(), 300);
    let sink = Sink::start();
    let wd = Workdir::with(&[dc.mailbox()]);
    let base = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&format!(
        "{base}\n{}\n[ack]\nenabled = true\nmax-age = 8640000000\n",
        sink.smtp_toml()
    ));

    let mut rng = Prng::new(0x5EED_C0DE);
    let mut killed_midway = 0;
    let mut progress = Vec::new();
    for _ in 0..KILLS {
        let mut child = spawn(wd.cmd(&["sync"]));
        std::thread::sleep(Duration::from_millis(rng.range(20, 400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // A kill before the store was made leaves none to read.
        let tickets = if wd.db().exists() {
            wd.tickets().len()
        } else {
            0
        };
        if status.signal() == Some(9) && tickets < 300 {
            killed_midway += 1;
        }
        // a finished run must have succeeded
        assert!(status.signal() == Some(9) || status.success(), "{status}");
        progress.push(tickets);
    }
    eprintln!("tickets after each kill: {progress:?}");
    assert!(
        killed_midway > 0,
        "no kill landed before the work was done: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "ticket count never goes back: {progress:?}"
    );

    wd.mailticket(&["sync", "--json"]).success();

    assert_eq!(wd.tickets().len(), 300);
    let ids = wd.ticketed_message_ids();
    assert_eq!(ids.len(), 300, "one message per ticket");
    let unique: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(unique.len(), 300, "no Message-ID twice");
    assert_eq!(unique, on_server, "exactly the messages on the server");
    assert_eq!(dc.unseen("INBOX"), 0, "every message is \\Seen");

    // Acknowledgements: never one delivered twice; every ticket's ack was sent, or is
    // reported as uncertain (a kill during its SMTP conversation), never resent blindly.
    let acked: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.header("In-Reply-To").expect("an ack has In-Reply-To"))
        .collect();
    let unique_acked: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(
        unique_acked.len(),
        acked.len(),
        "an acknowledgement went out twice"
    );
    let outbox = wd.mailticket(&["outbox", "--json"]).success().json();
    let rows = outbox.as_array().unwrap();
    let settled = rows
        .iter()
        .filter(|r| matches!(r["status"].as_str(), Some("sent" | "sending")))
        .count();
    assert_eq!(
        settled, 300,
        "one ack per ticket, sent or uncertain: {outbox}"
    );
    assert!(
        acked.len() >= 300 - (KILLS),
        "{} acks delivered",
        acked.len()
    );
}
