//! The names of ticket events (`ticket.created`, ...): the vocabulary shared by the store
//! that records events, the config that filters them and the hooks that deliver them.

/// A new ticket from inbound mail.
pub const TICKET_CREATED: &str = "ticket.created";
/// A message (in or out) threaded into an existing ticket.
pub const MESSAGE_ADDED: &str = "ticket.message_added";
/// Closed or reopened (or a ticket filed closed).
pub const STATUS_CHANGED: &str = "ticket.status_changed";
/// A delivery report attached to a ticket.
pub const MESSAGE_BOUNCED: &str = "message.bounced";
/// The SMTP server accepted an acknowledgement or a reply.
pub const OUTBOUND_SENT: &str = "outbound.sent";
/// An acknowledgement or a reply failed for good.
pub const OUTBOUND_FAILED: &str = "outbound.failed";
/// A mailbox cannot log in, needs an OAuth2 sign-in, or failed several times in a row.
pub const MAILBOX_FAILING: &str = "mailbox.failing";
/// A failing mailbox works again.
pub const MAILBOX_RECOVERED: &str = "mailbox.recovered";
/// The signed event `hooks --test NAME` sends (never recorded).
pub const TEST: &str = "test";

/// Every type a hook's `events` filter may name.
pub const TYPES: &[&str] = &[
    TICKET_CREATED,
    MESSAGE_ADDED,
    STATUS_CHANGED,
    MESSAGE_BOUNCED,
    OUTBOUND_SENT,
    OUTBOUND_FAILED,
    MAILBOX_FAILING,
    MAILBOX_RECOVERED,
];
