//! Integration tests: the built `mailticket` binary against a real Dovecot per test.
//!
//! Each test starts its own Dovecot (`tests/env/imap-server`) on free loopback ports and its own
//! work directory, so tests run in parallel; a store test its own PostgreSQL cluster
//! (`tests/env/pg-server`, [`pg_harness::Postgres`]). Run them all with `bash scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod pg_harness;
mod sink;

mod cli;
mod connect;
mod conventions;
mod corpus;
mod crash;
mod doctor;
mod events;
mod export;
mod faults;
mod fuzz;
mod graph;
mod hooks;
mod hostile;
mod identity;
mod import;
mod leases;
mod oauth2;
mod oauth2_env;
mod outbound;
mod quarantine;
mod reload;
mod robust;
mod run_output;
mod secrets;
mod selftest;
mod shared;
mod stores;
mod sync;
mod understanding;
mod watch;
