//! The Microsoft Graph keys of a `[[mailbox]]` (`transport = "graph"`) and of `[smtp]`
//! (`transport = "graph"`): the API root, the mailbox (`username`), the OAuth2 table the
//! token comes from, and the scope that a `provider = "microsoft"` table implies for Graph.

use std::path::Path;

use serde::Deserialize;

use super::{Check, Flow, MailboxConfig, OAuth2Config, Provider, SmtpConfig, check_auth};

/// The Graph API root when `graph-url` is not given.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
/// The app-only scope: every application permission granted to the app (`Mail.ReadWrite`,
/// `Mail.Send`).
pub const GRAPH_APP_SCOPE: &str = "https://graph.microsoft.com/.default";
/// A user's (delegated) scopes for a shared mailbox.
pub const GRAPH_USER_SCOPE: &str = "https://graph.microsoft.com/Mail.ReadWrite.Shared \
     https://graph.microsoft.com/Mail.Send.Shared offline_access";

/// How a mailbox is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// IMAP (the default).
    #[default]
    Imap,
    /// Microsoft Graph: a delta query per folder, each message as raw MIME.
    Graph,
}

/// How mail is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTransport {
    /// SMTP (the default).
    #[default]
    Smtp,
    /// Microsoft Graph `sendMail`, the message as MIME.
    Graph,
}

pub(super) fn default_poll_interval() -> u64 {
    5
}

/// A Graph `[[mailbox]]` (`at` names it): no IMAP keys, a mailbox, an `oauth2` table, a
/// usable `graph-url`.
pub(super) fn validate_mailbox(mb: &mut MailboxConfig, at: &str, base: &Path) -> Check {
    if !mb.host.trim().is_empty() {
        return Err(format!(
            "{at}: `host` is for IMAP; a `transport = \"graph\"` mailbox talks to `graph-url`"
        ));
    }
    if mb.password.is_some() {
        return Err(format!(
            "{at}: Graph takes an OAuth2 token, not `password`; remove it"
        ));
    }
    if mb.username.trim().is_empty() {
        return Err(format!(
            "{at}: `username` must name the mailbox (its address or user id)"
        ));
    }
    if mb.oauth2.is_none() {
        return Err(format!(
            "{at}: `transport = \"graph\"` needs `oauth2 = {{ ... }}` (where the token comes from)"
        ));
    }
    check_auth(at, true, &mut mb.oauth2, false, base)?;
    complete_scope(mb.oauth2.as_mut());
    check_url(mb.graph_url.as_deref(), at)
}

/// `[smtp]` with `transport = "graph"`: the sending mailbox (`username`), `from`, a token.
pub(super) fn validate_smtp(smtp: &mut SmtpConfig, at: &str, base: &Path) -> Check {
    if !smtp.host.trim().is_empty() {
        return Err(format!(
            "{at}: `host` is for SMTP; `transport = \"graph\"` sends through `graph-url`"
        ));
    }
    if smtp.password.is_some() {
        return Err(format!(
            "{at}: Graph takes an OAuth2 token, not `password`; remove it"
        ));
    }
    if smtp.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
        return Err(format!(
            "{at}: `transport = \"graph\"` needs `username` (the mailbox that sends)"
        ));
    }
    check_auth(at, true, &mut smtp.oauth2, false, base)?;
    complete_scope(smtp.oauth2.as_mut());
    check_url(smtp.graph_url.as_deref(), at)?;
    super::check_from(smtp, at)
}

/// A Microsoft table without `scope` asks for Graph's scope, not IMAP's.
fn complete_scope(o: Option<&mut OAuth2Config>) {
    if let Some(o) = o
        && o.provider == Some(Provider::Microsoft)
        && o.token_command.is_none()
    {
        o.scope.get_or_insert_with(|| {
            match o.flow {
                Some(Flow::ClientCredentials) => GRAPH_APP_SCOPE,
                _ => GRAPH_USER_SCOPE,
            }
            .to_owned()
        });
    }
}

/// `graph-url` is `https://`, or `http://` to loopback (a local stand-in).
fn check_url(url: Option<&str>, at: &str) -> Check {
    let Some(url) = url else { return Ok(()) };
    let u = reqwest::Url::parse(url).map_err(|e| format!("{at}: `graph-url = {url:?}`: {e}"))?;
    let loopback = u
        .host_str()
        .map(|h| h.trim_matches(['[', ']']))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "{at}: `graph-url = {url:?}` must be https:// (plain http:// only to 127.0.0.1 or ::1)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, Transport};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/nonexistent/c.toml")).map_err(|e| e.to_string())
    }

    const APP: &str = "oauth2 = { provider = 'microsoft', tenant = 't', flow = \
                       'client-credentials', client-id = 'c', client-secret = 's' }";

    #[test]
    fn a_graph_mailbox_needs_a_token_and_no_imap_keys() {
        let ok = parse(&format!(
            "[[mailbox]]\nname = 'm'\ntransport = 'graph'\nusername = 'support@x.example'\n{APP}\n"
        ))
        .unwrap();
        let mb = &ok.mailboxes[0];
        assert_eq!(mb.transport, Transport::Graph);
        assert_eq!(mb.poll_interval, 5);
        assert_eq!(
            mb.oauth2.as_ref().unwrap().scope.as_deref(),
            Some(super::GRAPH_APP_SCOPE)
        );
        let no_token = parse("[[mailbox]]\nname = 'm'\ntransport = 'graph'\nusername = 'u'\n");
        assert!(no_token.unwrap_err().contains("needs `oauth2"));
        let host = parse(&format!(
            "[[mailbox]]\nname = 'm'\ntransport = 'graph'\nhost = 'h'\nusername = 'u'\n{APP}\n"
        ));
        assert!(host.unwrap_err().contains("`host` is for IMAP"));
        let http = parse(&format!(
            "[[mailbox]]\nname = 'm'\ntransport = 'graph'\nusername = 'u'\n\
             graph-url = 'http://graph.example/v1.0'\n{APP}\n"
        ));
        assert!(http.unwrap_err().contains("must be https://"));
        let local = parse(&format!(
            "[[mailbox]]\nname = 'm'\ntransport = 'graph'\nusername = 'u'\n\
             graph-url = 'http://127.0.0.1:8080/v1.0'\n{APP}\n"
        ));
        assert!(local.is_ok());
        let imap = parse("[[mailbox]]\nname = 'm'\nusername = 'u'\npassword = 'p'\n");
        assert!(imap.unwrap_err().contains("`host` must not be empty"));
    }

    #[test]
    fn the_graph_example_parses() {
        let c = parse(include_str!("../../examples/outlook365-graph.toml")).unwrap();
        assert_eq!(c.mailboxes[0].transport, Transport::Graph);
        assert_eq!(c.smtp_token_mailbox().unwrap().name, "support");
        let scope = c.mailboxes[0].oauth2.as_ref().unwrap().scope.as_deref();
        assert_eq!(scope, Some(super::GRAPH_APP_SCOPE));
    }

    #[test]
    fn smtp_through_graph_shares_the_mailbox_token() {
        let c = parse(&format!(
            "[[mailbox]]\nname = 'm'\ntransport = 'graph'\nusername = 'support@x.example'\n{APP}\n\
             [smtp]\ntransport = 'graph'\nusername = 'Support@x.example'\nfrom = 'support@x.example'\n"
        ))
        .unwrap();
        assert_eq!(c.smtp_token_mailbox().map(|m| m.name.as_str()), Some("m"));
        let lonely = parse(
            "[smtp]\ntransport = 'graph'\nusername = 'support@x.example'\nfrom = 'support@x.example'\n",
        );
        assert!(lonely.unwrap_err().contains("shares the token"));
        let host = parse(
            "[smtp]\ntransport = 'graph'\nhost = 'smtp.x'\nusername = 'u'\nfrom = 'support@x.example'\n",
        );
        assert!(host.unwrap_err().contains("`host` is for SMTP"));
    }
}
