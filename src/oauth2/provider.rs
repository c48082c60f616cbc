//! What a well-known OAuth2 provider implies: its token and device endpoints, and the scopes
//! that let one token serve both IMAP and SMTP.
//!
//! The config loader checks what an `oauth2` table says itself; [`complete`] then fills in what
//! its `provider` implies and checks that an endpoint, a client and scopes are known. The CLI
//! calls it right after loading the config, before anything touches the network, so a
//! problem here is a configuration error (exit 2) naming the file and the key.

use crate::config::{Config, Flow, OAuth2Config, Provider};
use crate::error::{Error, Result};

/// Microsoft's IMAP and SMTP scopes for a user's token (one token serves both).
pub const MICROSOFT_USER_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All \
     https://outlook.office.com/SMTP.Send offline_access";
/// Microsoft's app-only scope: the roles granted to the app (`IMAP.AccessAsApp`,
/// `SMTP.SendAsApp`).
pub const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";
/// Gmail's one scope for IMAP and SMTP.
pub const GOOGLE_SCOPE: &str = "https://mail.google.com/";

/// Completes every `oauth2` table of `config` (`[smtp]`'s first) from its `provider`.
pub fn complete(config: &mut Config) -> Result<()> {
    let path = config.path.clone();
    for (at, o) in config.oauth2_tables_mut() {
        complete_table(o).map_err(|m| Error::Config {
            path: path.clone(),
            message: format!("{at}: oauth2: {m}"),
        })?;
    }
    Ok(())
}

/// Fills in one table's provider defaults (what the user wrote wins) and checks that the
/// token endpoint, the client id and the scopes are known. A `token-command` needs none.
fn complete_table(o: &mut OAuth2Config) -> std::result::Result<(), String> {
    if o.token_command.is_some() {
        return Ok(());
    }
    let flow = o.flow.unwrap_or(Flow::RefreshToken);
    match o.provider {
        Some(Provider::Microsoft) => microsoft(o, flow)?,
        Some(Provider::Google) => google(o, flow)?,
        None => {
            if o.tenant.is_some() {
                return Err("`tenant` is for `provider = \"microsoft\"` only".into());
            }
        }
    }
    for (key, value) in [
        ("token-url", &o.token_url),
        ("client-id", &o.client_id),
        ("scope", &o.scope),
    ] {
        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Err(format!(
                "`{key}` is missing (or set `provider = \"microsoft\"` / `\"google\"`, or use \
                 `token-command`)"
            ));
        }
    }
    Ok(())
}

/// Microsoft Entra ID: the tenant's v2.0 endpoints; the user scopes for a refresh token, the
/// app's `.default` for client credentials.
fn microsoft(o: &mut OAuth2Config, flow: Flow) -> std::result::Result<(), String> {
    let Some(tenant) = o.tenant.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Err(
            "`provider = \"microsoft\"` needs `tenant` (the directory id or \
                    domain, e.g. \"contoso.onmicrosoft.com\")"
                .into(),
        );
    };
    let root = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
    o.token_url.get_or_insert_with(|| format!("{root}/token"));
    o.device_url
        .get_or_insert_with(|| format!("{root}/devicecode"));
    o.scope.get_or_insert_with(|| {
        match flow {
            Flow::RefreshToken => MICROSOFT_USER_SCOPE,
            Flow::ClientCredentials => MICROSOFT_APP_SCOPE,
        }
        .to_owned()
    });
    Ok(())
}

/// Google: one endpoint pair and one scope; Gmail has no app-only flow.
fn google(o: &mut OAuth2Config, flow: Flow) -> std::result::Result<(), String> {
    if flow == Flow::ClientCredentials {
        return Err("Google has no client-credentials flow for Gmail; use \
                    `flow = \"refresh-token\"` or `token-command`"
            .into());
    }
    if o.tenant.is_some() {
        return Err("`tenant` is for `provider = \"microsoft\"` only".into());
    }
    o.token_url
        .get_or_insert_with(|| "https://oauth2.googleapis.com/token".to_owned());
    o.device_url
        .get_or_insert_with(|| "https://oauth2.googleapis.com/device/code".to_owned());
    o.scope.get_or_insert_with(|| GOOGLE_SCOPE.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::AuthMech;

    /// What the CLI does: load, then complete.
    fn parse(text: &str) -> Result<Config> {
        let mut c = Config::parse(text, Path::new("/etc/mailticket/mailticket.toml"))?;
        complete(&mut c)?;
        Ok(c)
    }

    #[test]
    fn the_outlook_example_is_completed() {
        let c = parse(include_str!("../../examples/outlook365-shared.toml")).unwrap();
        assert_eq!(c.mailboxes[0].auth, AuthMech::Xoauth2);
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(o.scope.as_deref(), Some(MICROSOFT_APP_SCOPE));
    }

    #[test]
    fn oauth2_tables_are_checked_and_providers_filled_in() {
        let mb = |auth: &str, extra: &str| {
            format!(
                "[[mailbox]]\nname = 'support'\nhost = 'h'\nusername = 'support@contoso.com'\n\
                 auth = '{auth}'\n{extra}"
            )
        };
        let err = |text: &str| parse(text).unwrap_err().to_string();

        // Microsoft app-only: token URL and the .default scope filled in
        let c = parse(&mb(
            "xoauth2",
            "oauth2 = { provider = 'microsoft', tenant = 'contoso', flow = 'client-credentials', \
             client-id = 'app', client-secret = 's' }\n",
        ))
        .unwrap();
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(
            o.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso/oauth2/v2.0/token")
        );
        assert_eq!(o.scope.as_deref(), Some(MICROSOFT_APP_SCOPE));
        // delegated: IMAP + SMTP + offline_access, and the device endpoint
        let c = parse(&mb(
            "oauthbearer",
            "oauth2 = { provider = 'microsoft', tenant = 'contoso', client-id = 'app' }\n",
        ))
        .unwrap();
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(o.flow, Some(Flow::RefreshToken));
        assert_eq!(o.scope.as_deref(), Some(MICROSOFT_USER_SCOPE));
        assert!(o.device_url.as_deref().unwrap().ends_with("/devicecode"));
        let c = parse(&mb(
            "xoauth2",
            "oauth2 = { provider = 'google', client-id = 'g' }\n",
        ))
        .unwrap();
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(o.scope.as_deref(), Some(GOOGLE_SCOPE));

        for (extra, needle) in [
            ("", "needs `oauth2 = { ... }`"),
            (
                "oauth2 = { provider = 'microsoft', client-id = 'a' }\n",
                "needs `tenant`",
            ),
            (
                "oauth2 = { token-url = 'https://t/token', client-id = 'a' }\n",
                "`scope` is missing",
            ),
            (
                "oauth2 = { token-url = 'http://login.example.com/token', client-id = 'a', \
                 scope = 's' }\n",
                "unencrypted",
            ),
            (
                "oauth2 = { flow = 'client-credentials', token-url = 'https://t/token', \
                 client-id = 'a', scope = 's' }\n",
                "needs `client-secret`",
            ),
            (
                "oauth2 = { token-command = ['helper'], client-id = 'a' }\n",
                "stands alone: remove `client-id`",
            ),
            (
                "oauth2 = { provider = 'google', flow = 'client-credentials', client-id = 'a', \
                 client-secret = 's' }\n",
                "no client-credentials flow",
            ),
            (
                "oauth2 = { token-command = ['helper'] }\npassword = 'p'\n",
                "`password` is not used",
            ),
            (
                "oauth2 = { tokencommand = ['helper'] }\n",
                "unknown field `tokencommand`",
            ),
        ] {
            let e = err(&mb("xoauth2", extra));
            assert!(e.contains(needle), "{extra:?}: {e}");
            assert!(e.contains("/etc/mailticket/mailticket.toml"), "{e}");
        }
        // loopback token endpoints may be plain http (local test servers, helpers)
        assert!(
            parse(&mb(
                "xoauth2",
                "oauth2 = { token-url = 'http://127.0.0.1:8080/token', client-id = 'a', \
                 scope = 's' }\n"
            ))
            .is_ok()
        );
        // an oauth2 table with a password auth is a mistake, not ignored
        let e = err(&mb(
            "login",
            "password = 'p'\noauth2 = { token-command = ['x'] }\n",
        ));
        assert!(e.contains("`oauth2` needs `auth"), "{e}");

        // [smtp] shares the mailbox token by username, or says why it cannot
        let smtp = |user: &str| {
            format!(
                "{}\n[smtp]\nhost = 's'\nusername = '{user}'\nauth = 'xoauth2'\n\
                 from = 'support@contoso.com'\n",
                mb("xoauth2", "oauth2 = { token-command = ['helper'] }\n")
            )
        };
        let c = parse(&smtp("SUPPORT@contoso.com")).unwrap();
        assert_eq!(c.smtp_token_mailbox().unwrap().name, "support");
        let e = err(&smtp("other@contoso.com"));
        assert!(e.contains("no OAuth2 mailbox has username"), "{e}");
    }
}
