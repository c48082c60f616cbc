//! The harness on its own: proves the test environment before blaming `mailticket`.

use crate::harness::{Dovecot, Prng, mailgen};

#[test]
fn dovecot_starts_seeds_appends_resets_and_stops() {
    let dc = Dovecot::start();
    let dir = dc.dir.clone();
    let port = dc.imaps_port;
    assert!(dc.ca_file().is_file());

    dc.seed(4, 1, 3);
    assert_eq!(dc.count("INBOX"), 5);
    assert_eq!(dc.unseen("INBOX"), 5);
    let msgs = dc.messages("INBOX");
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[0].message_id.split('@').next(), Some("0.3.S"));
    assert_eq!(msgs[4].message_id.split('@').next(), Some("4.3.L"));
    assert!(msgs.iter().all(|m| !m.seen()));

    // mailgen `one` reproduces what `seed` wrote
    let one = String::from_utf8(mailgen::one(4, 3, true)).unwrap();
    assert!(one.contains(&format!("Message-ID: <{}>", msgs[4].message_id)));
    // and `many` reproduces `one`
    let many = mailgen::many(3, 3);
    assert_eq!(many.len(), 3);
    assert_eq!(many[2], mailgen::one(2, 3, false));
    assert!(String::from_utf8_lossy(&many[0]).contains(&msgs[0].message_id));

    dc.append("INBOX", &mailgen::one(9, 3, false), true);
    dc.append("INBOX", &Prng::new(1).bytes(512), false);
    let msgs = dc.messages("INBOX");
    assert_eq!(msgs.len(), 7);
    assert!(msgs[5].seen() && !msgs[6].seen());
    assert_eq!(msgs[6].message_id, "");
    assert_eq!(dc.unseen("INBOX"), 6);

    dc.create_folder("Processed");
    assert_eq!(dc.count("Processed"), 0);

    let before = dc.uidvalidity();
    dc.reset();
    dc.seed(2, 0, 3);
    assert_eq!(dc.count("INBOX"), 2);
    assert_ne!(
        dc.uidvalidity(),
        before,
        "reset must give a new UIDVALIDITY"
    );

    drop(dc);
    assert!(!dir.exists(), "Drop removes the directory");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "Drop stops the server"
    );
}

#[test]
fn prng_is_deterministic() {
    let (mut a, mut b) = (Prng::new(42), Prng::new(42));
    let xs: Vec<u64> = (0..5).map(|_| a.range(20, 400)).collect();
    let ys: Vec<u64> = (0..5).map(|_| b.range(20, 400)).collect();
    assert_eq!(xs, ys);
    assert!(xs.iter().all(|x| (20..=400).contains(x)));
}
