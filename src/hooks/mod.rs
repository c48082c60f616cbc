//! Ticket events out: what each event says ([`event`]), which hook gets which event
//! ([`Route`]), and (in the delivery modules) how and when each delivery is attempted.
//!
//! Events are recorded by the store in the transaction of what caused them (a message, a
//! reply, a status change, an outbox result); so is one delivery row per matching hook. This
//! module decides; the store only reads and writes the rows it is told to.

pub mod command;
pub mod deliver;
pub mod event;
pub mod health;
pub mod webhook;

/// Which events one hook receives: its name and its filters (empty: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The hook's name (`[[hook]] name`).
    pub name: String,
    /// Event types it takes; empty takes all.
    pub events: Vec<String>,
    /// Mailboxes whose events it takes; empty takes all.
    pub mailboxes: Vec<String>,
}

impl Route {
    /// Whether an event of type `kind` about `mailbox` goes to this hook.
    pub fn matches(&self, kind: &str, mailbox: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == kind))
            && (self.mailboxes.is_empty() || self.mailboxes.iter().any(|m| m == mailbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filters_take_everything_and_filters_narrow() {
        let all = Route {
            name: "a".into(),
            ..Route::default()
        };
        assert!(all.matches("ticket.created", ""));
        let some = Route {
            name: "b".into(),
            events: vec!["ticket.created".into()],
            mailboxes: vec!["support".into()],
        };
        assert!(some.matches("ticket.created", "support"));
        assert!(!some.matches("ticket.created", "sales"));
        assert!(!some.matches("outbound.sent", "support"));
    }
}
