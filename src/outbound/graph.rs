//! Sending through Microsoft Graph: `POST /users/{mailbox}/sendMail` with the message we
//! composed, byte for byte, as base64 MIME. Our Message-ID, In-Reply-To, References and
//! RFC 3834 headers travel inside it; Graph takes the recipients from its To, Cc and Bcc.
//! The outbox's rule is unchanged: the row is committed `sending` before the request, and a
//! request that may have reached Graph without an answer is never sent again on its own.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SmtpConfig;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::oauth2::Credentials;
use crate::outbound::smtp::Sent;

/// `[smtp] transport = "graph"`: sends as the `username` mailbox.
#[derive(Debug)]
pub struct GraphSender {
    graph: Graph,
    timeout: Duration,
}

impl GraphSender {
    /// The sender of `[smtp]` with its token source.
    pub fn new(c: &SmtpConfig, creds: Option<Credentials>) -> Result<GraphSender> {
        let Some(Credentials::OAuth2(source)) = creds else {
            return Err(Error::Internal(
                "[smtp]: Graph needs an OAuth2 token source".into(),
            ));
        };
        let user = c.username.as_deref().unwrap_or_default();
        Ok(GraphSender {
            graph: Graph::new(
                c.graph_url.as_deref(),
                user,
                c.ca_file.as_deref(),
                Arc::clone(&source),
                c.timeout(),
            )?,
            timeout: c.timeout(),
        })
    }

    /// The API's host.
    pub fn host(&self) -> &str {
        self.graph.host()
    }

    /// How long one send may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `raw`. Accepted (202), refused for good (400: Graph will not take this
    /// message), later (no token, no permission yet, throttled, unreachable), or uncertain
    /// (the request may have reached Graph).
    pub async fn send(&self, raw: &[u8]) -> Sent {
        match self.graph.send_mail(raw).await {
            Ok(()) => Sent::Accepted(format!("202 Accepted by Microsoft Graph ({})", self.host())),
            Err(f) if f.maybe_sent => Sent::Uncertain(f.error.to_string()),
            Err(f) => match f.error {
                Error::Protocol { .. } => Sent::Refused(f.error.to_string()),
                other => Sent::Later(other.to_string()),
            },
        }
    }

    /// The client, for `doctor`.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
}
