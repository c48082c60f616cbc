//! Ticket events out: how and when each delivery is attempted (Standard Webhooks, command
//! hooks, retries, order per ticket), and which hooks there are ([`deliver::routes`]). What each
//! event says is built in [`crate::store::event`]; which hook takes which event is a
//! [`crate::store::Route`].
//!
//! Events are recorded by the store in the transaction of what caused them (a message, a
//! reply, a status change, an outbox result); so is one delivery row per matching hook. This
//! module decides; the store only reads and writes the rows it is told to.

pub mod command;
pub mod deliver;
pub mod health;
pub mod webhook;
