//! Which SMTP server sends a message: the one its mailbox names (`[mailbox.smtp]` merged over
//! `[smtp]` by the config loader), else `[smtp]`. Only the choice lives here; how a
//! connection is made and a message sent is [`super::smtp`]'s.

use std::collections::HashMap;
use std::time::Duration;

use super::Sender;

/// The SMTP servers of a run: `[smtp]`, and each mailbox's own.
pub struct Senders {
    default: Sender,
    own: HashMap<String, Sender>,
}

impl Senders {
    /// `[smtp]` alone.
    pub fn new(default: Sender) -> Senders {
        Senders {
            default,
            own: HashMap::new(),
        }
    }

    /// Adds `mailbox`'s own server.
    pub fn add(&mut self, mailbox: &str, smtp: Sender) {
        self.own.insert(mailbox.to_owned(), smtp);
    }

    /// The server for mail on `mailbox`'s tickets (an outbox row's mailbox; empty: `[smtp]`).
    pub fn for_mailbox(&self, mailbox: &str) -> &Sender {
        self.own.get(mailbox).unwrap_or(&self.default)
    }

    /// Which server [`Senders::for_mailbox`] picks for `mailbox`, as a key: the mailbox's name
    /// when it has its own, else empty (`[smtp]`).
    pub fn key(&self, mailbox: &str) -> String {
        if self.own.contains_key(mailbox) {
            mailbox.to_owned()
        } else {
            String::new()
        }
    }

    /// The longest conversation any of them may take.
    pub fn timeout(&self) -> Duration {
        self.own
            .values()
            .map(Sender::timeout)
            .fold(self.default.timeout(), Duration::max)
    }
}
