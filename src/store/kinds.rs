//! The closed sets of values the store keeps in text columns: a ticket's status, a message's
//! direction, an outbox row's kind and status. Enums in the code; in SQL the same words,
//! checked by the schema's CHECK constraints as a second line of defence.

use super::db::{Cell, Param, Value};
use crate::error::{Error, Result};

/// Defines an enum whose variants are stored and shown as fixed words.
macro_rules! stored_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The word in the store and in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// The value a stored word names.
            pub fn parse(word: &str) -> Option<$name> {
                match word {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl Param for $name {
            fn value(&self) -> Value<'_> {
                Value::Text(self.as_str())
            }
        }

        impl Cell for $name {
            fn from_value(v: Value<'_>) -> Result<Option<Self>> {
                let Some(word) = String::from_value(v)? else {
                    return Ok(None);
                };
                $name::parse(&word).map(Some).ok_or_else(|| {
                    Error::Internal(format!("store: unknown {} {word:?}", stringify!($name)))
                })
            }
        }
    };
}

stored_words!(
    /// A ticket's status.
    TicketStatus {
        /// Waiting for an agent.
        Open = "open",
        /// Done (or never to be worked on: an unplaced bounce, mail from ourselves).
        Closed = "closed",
    }
);

stored_words!(
    /// Which way a message went.
    Direction {
        /// From a customer (or a machine) to us.
        In = "in",
        /// From us: an acknowledgement or a reply.
        Out = "out",
    }
);

stored_words!(
    /// What an outbox row sends.
    OutboxKind {
        /// The automatic acknowledgement of a new request.
        Ack = "ack",
        /// An agent's reply.
        Reply = "reply",
    }
);

stored_words!(
    /// Where an outbox row stands.
    OutboxStatus {
        /// Waiting to be sent (again).
        Pending = "pending",
        /// Claimed: being sent, or interrupted, or sent without an answer (uncertain).
        Sending = "sending",
        /// Accepted by the server.
        Sent = "sent",
        /// Refused for good.
        Failed = "failed",
        /// Never to be sent (an acknowledgement the policy declined), with the reason.
        Skipped = "skipped",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_sqlite() {
        use crate::store::db::{Db, params};
        let c = Db::Lite(rusqlite::Connection::open_in_memory().unwrap());
        for s in [TicketStatus::Open, TicketStatus::Closed] {
            let back: TicketStatus = c.query_row("SELECT ?1", params![s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        for s in [OutboxStatus::Pending, OutboxStatus::Skipped] {
            assert_eq!(OutboxStatus::parse(s.as_str()), Some(s));
        }
        let bad: Result<Direction> = c.query_row("SELECT 'sideways'", params![], |r| r.get(0));
        assert!(bad.is_err());
        assert_eq!(serde_json::to_string(&Direction::In).unwrap(), "\"in\"");
    }
}
