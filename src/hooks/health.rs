//! When a mailbox's trouble is worth an alert: `mailbox.failing` at once for a refused login
//! or a needed OAuth2 sign-in (retrying will not help), else after [`FAILING_AFTER`] failed
//! passes or sessions in a row; `mailbox.recovered` once it works again. The store keeps the
//! count and records the events.

use crate::error::Error;

/// Failed passes (or sessions) in a row after which a mailbox is failing.
pub const FAILING_AFTER: i64 = 3;

/// Whether a mailbox whose `failures`-th failure in a row is `e` is failing.
pub fn failing(e: &Error, failures: i64) -> bool {
    matches!(e, Error::Auth { .. } | Error::OAuth2 { .. }) || failures >= FAILING_AFTER
}

/// [`failing`] for `e`, as the store asks it (with the count it keeps).
pub fn rule(e: &Error) -> impl FnOnce(i64) -> bool + Send + 'static {
    let refused = failing(e, 0);
    move |failures| refused || failures >= FAILING_AFTER
}

/// Records a failure of `mailbox` (logging, never failing, when the store cannot).
pub async fn failed(store: &crate::store::StoreThread, mailbox: &str, e: &Error) {
    let (name, why, rule) = (mailbox.to_owned(), e.to_string(), rule(e));
    match store
        .call(move |s| s.mailbox_failed(&name, &why, rule))
        .await
    {
        Ok(true) => {
            tracing::error!(mailbox, error = %e, "mailbox failing (mailbox.failing recorded)")
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(mailbox, error = %e, "cannot record the mailbox's health"),
    }
}

/// Records that `mailbox` worked.
pub async fn worked(store: &crate::store::StoreThread, mailbox: &str) {
    let name = mailbox.to_owned();
    match store.call(move |s| s.mailbox_worked(&name)).await {
        Ok(true) => tracing::info!(mailbox, "mailbox recovered (mailbox.recovered recorded)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(mailbox, error = %e, "cannot record the mailbox's health"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_fails_at_once_and_an_outage_after_three() {
        let net = Error::Network {
            host: "h".into(),
            message: "down".into(),
        };
        assert!(!failing(&net, 1));
        assert!(failing(&net, FAILING_AFTER));
        let auth = Error::Auth {
            host: "h".into(),
            user: "u".into(),
            message: "no".into(),
        };
        assert!(failing(&auth, 1));
    }
}
