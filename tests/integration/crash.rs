//! Exactly once under `kill -9`: a sync killed at random moments, again and again, then run to
//! the end, has ticketed every message exactly once.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::{Dovecot, Prng, Workdir, spawn};

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
    let wd = Workdir::with(&[dc.mailbox()]);

    let mut rng = Prng::new(0x5EED_C0DE);
    let mut killed_midway = 0;
    let mut progress = Vec::new();
    for _ in 0..KILLS {
        let mut child = spawn(wd.cmd(&["sync"]));
        std::thread::sleep(Duration::from_millis(rng.range(20, 400)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let tickets = wd.tickets().len();
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
}
