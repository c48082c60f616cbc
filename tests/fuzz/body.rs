//! The body of the `parse_classify_thread` fuzz target, shared with the bounded random test
//! in `tests/integration/fuzz.rs`: bytes -> parse -> classify -> thread helpers -> quote split
//! -> store.

use mailticket::classify::{Identity, Kind, classify};
use mailticket::message::parse;
use mailticket::pipeline::{Plan, Rules, process};
use mailticket::quote;
use mailticket::store::{Origin, Outcome, Store};
use mailticket::thread;

/// Runs one input. Panics only on a real finding.
pub fn run(store: &mut Store, data: &[u8]) {
    let me = Identity {
        addresses: vec!["support@example.com".into()],
    };
    if let Ok(p) = parse(data) {
        let c = classify(&p, &me);
        if c.kind != Kind::Normal {
            assert!(!c.reasons.is_empty(), "{:?} without a reason", c.kind);
        }
        let n = thread::normalize_subject(&p.subject);
        assert_eq!(
            thread::normalize_subject(&n),
            n,
            "normalising is idempotent"
        );
        let _ = thread::subject_tag(&p.subject);
        let _ = thread::parent_ids(&p);
        let _ = thread::customer(&p, &["info@example.com".to_owned()]);
        let _ = p.failed_recipients();
        let split = quote::split(&p.text);
        assert!(
            split.new.len() <= p.text.len(),
            "the new part is part of the text"
        );
    }
    let origin = Origin::unplaced("fuzz", "");
    let plan = Plan {
        rules: &Rules::default(),
        ack: None,
        progress: None,
    };
    match process(store, &me, data, &origin, 0, plan).map(|s| s.outcome) {
        Ok(Outcome::Created(_) | Outcome::Threaded(_) | Outcome::Duplicate(_)) => {}
        Ok(Outcome::Quarantined(_)) => {}
        Err(e) => panic!("the store refused a message: {e}"),
    }
}
