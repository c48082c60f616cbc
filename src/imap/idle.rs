//! Waiting for new mail on a selected folder: IMAP IDLE (RFC 2177) with every step bounded.
//!
//! async-imap's IDLE has no timeouts of its own, and a silently dead connection would hang
//! its `done()` for ever, so here: starting IDLE and ending it (DONE) each run under the
//! session's operation timeout, and the wait itself ends at the renewal deadline even though
//! the server's `* OK Still here` keepalives would extend async-imap's own timer. Only a
//! change to the folder's size (EXISTS, RECENT) wakes the caller; flag changes and
//! expunges made elsewhere are read and ignored. `* BYE` is an error: the session is over.
//! Called by [`crate::watch`].

use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{MailboxDatum, Response, Status};
use tokio_util::sync::CancellationToken;

use super::guard::{Allowance, excerpt};
use super::session::Imap;
use super::wire::{imap_err, timed};
use crate::error::{Error, Result};

/// Why an IDLE ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The folder got new messages.
    Changed,
    /// The renewal interval passed; IDLE again after a look above the cursor.
    Renew,
    /// Shutdown was asked for.
    Stopped,
}

impl Imap {
    /// Drains what the server said on the side during earlier commands; true when any of it
    /// says the folder grew (new mail arrived while we were busy).
    pub fn take_changes(&mut self) -> bool {
        self.drain_unsolicited();
        std::mem::take(&mut self.grew)
    }

    /// IDLEs on the selected folder until new mail arrives, `renew` has passed, or `stop` is
    /// cancelled; then ends the IDLE with DONE and hands the session back. Any error (the
    /// server said BYE, the connection broke, DONE went unanswered) consumes the session.
    pub async fn idle(self, renew: Duration, stop: &CancellationToken) -> Result<(Imap, Wake)> {
        let mut imap = self;
        // Nothing is kept from what comes during IDLE: only a literal's size is bounded.
        imap.allow(Allowance {
            step: "idling",
            bytes: u64::MAX,
            lines: u64::MAX,
            literal: 1 << 20,
            expect: 0,
        });
        imap.drain_unsolicited();
        let Imap {
            session,
            host,
            limit,
            caps,
            exists,
            grew,
        } = imap;
        let mut handle = session.idle();
        timed(&host, limit, "starting IDLE", async {
            handle.init().await.map_err(|e| imap_err(&host, e))
        })
        .await?;
        tracing::debug!(host = %host, "idling");
        let deadline = tokio::time::Instant::now() + renew;
        let wake = loop {
            // async-imap's own timer restarts at every keepalive; ours does not.
            let (wait, _interrupt) = handle.wait_with_timeout(renew + limit);
            let r = tokio::select! {
                r = wait => r,
                () = tokio::time::sleep_until(deadline) => break Wake::Renew,
                () = stop.cancelled() => break Wake::Stopped,
            };
            match r.map_err(|e| imap_err(&host, e))? {
                IdleResponse::NewData(data) => match data.parsed() {
                    Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => {
                        break Wake::Changed;
                    }
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => {
                        return Err(Error::Network {
                            host,
                            message: format!(
                                "server said BYE: {}",
                                outcome.information.as_deref().unwrap_or("")
                            ),
                        });
                    }
                    other => {
                        let text = excerpt(format!("{other:?}").as_bytes(), 300);
                        tracing::trace!(response = %text, "ignored during IDLE");
                    }
                },
                IdleResponse::Timeout | IdleResponse::ManualInterrupt => break Wake::Renew,
            }
        };
        let session = timed(&host, limit, "ending IDLE", async {
            handle.done().await.map_err(|e| imap_err(&host, e))
        })
        .await?;
        let mut imap = Imap {
            session,
            host,
            limit,
            caps,
            exists,
            grew,
        };
        // DONE's reply may carry the RECENT that came with the EXISTS we woke for.
        if imap.take_changes() && wake == Wake::Renew {
            return Ok((imap, Wake::Changed));
        }
        Ok((imap, wake))
    }
}
