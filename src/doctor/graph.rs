//! `doctor` for Microsoft Graph: what the access token allows (its payload read, not
//! verified: Graph verifies it), the mailbox reached, the folder found; for `[smtp]
//! transport = "graph"` the send permission, without sending. Each failure names the missing
//! permission or policy.

use base64::Engine as _;

use super::{Report, Status};
use crate::config::{After, MailboxConfig, SmtpConfig};
use crate::error::Error;
use crate::graph::Graph;
use crate::oauth2::Credentials;

/// The permissions that let us read and mark a mailbox (application, delegated).
const READ_WRITE: &[&str] = &["Mail.ReadWrite", "Mail.ReadWrite.Shared"];
/// The permissions that let us send (application, delegated).
const SEND: &[&str] = &["Mail.Send", "Mail.Send.Shared"];
/// Graph's audience, by URL and by application id.
const AUDIENCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.com/",
    "00000003-0000-0000-c000-000000000000",
];

const FIX_POLICY: &str = "let the app into this mailbox: an application access policy \
    (New-ApplicationAccessPolicy -AccessRight RestrictAccess) whose group holds the mailbox, \
    or RBAC for Applications (New-ManagementRoleAssignment -Role \"Application Mail.ReadWrite\" \
    with a scope that includes it); for a delegated token, Full Access on the shared mailbox";

/// A Graph mailbox: token permissions, the mailbox, the folder, the MOVE target.
pub(super) async fn check_mailbox(
    r: &mut Report,
    scope: &str,
    mb: &MailboxConfig,
    creds: &Credentials,
) {
    let g = match crate::graph::sync::client(mb, creds) {
        Ok(g) => g,
        Err(e) => return r.fail(scope, "setup", &e, "check `graph-url` and `ca-file`"),
    };
    if !permissions(r, scope, &g, READ_WRITE).await {
        return;
    }
    match g.folder("inbox").await {
        Ok(_) => r.ok(
            scope,
            "mailbox",
            format!("{} reachable at {}", g.user(), g.host()),
        ),
        Err(e) => {
            let fix = match &e {
                Error::Auth { .. } => FIX_POLICY,
                Error::OAuth2 { .. } => "check the app's admin consent and the oauth2 scope",
                Error::Protocol { .. } => {
                    "check `username`: the mailbox's address or user id, with an Exchange Online license"
                }
                _ => "check `graph-url`, DNS, proxy and firewall",
            };
            return r.fail(scope, "mailbox", &e, fix);
        }
    }
    folder_step(r, scope, &g, &mb.folder, "folder", Status::Fail).await;
    if let After::Move(target) = &mb.after {
        folder_step(r, scope, &g, target, "move-target", Status::Warn).await;
    }
}

/// `[smtp] transport = "graph"`: the token may send (nothing is sent).
pub(super) async fn check_smtp(r: &mut Report, c: &SmtpConfig, creds: Option<Credentials>) {
    let scope = "smtp";
    let sender = match crate::outbound::graph::GraphSender::new(c, creds) {
        Ok(s) => s,
        Err(e) => return r.fail(scope, "setup", &e, "check [smtp] graph-url and ca-file"),
    };
    if permissions(r, scope, sender.graph(), SEND).await {
        r.push(
            scope,
            "send",
            Status::Ok,
            format!(
                "sendMail as {} at {} (not tried: it would send)",
                sender.graph().user(),
                sender.host()
            ),
            None,
        );
    }
}

/// Looks `name` up; missing is `missing` (a failure, or a warning for what sync creates).
async fn folder_step(
    r: &mut Report,
    scope: &str,
    g: &Graph,
    name: &str,
    step: &str,
    missing: Status,
) {
    match g.folder(name).await {
        Ok(Some(f)) => r.ok(scope, step, format!("{name} found ({})", f.name)),
        Ok(None) => {
            let (detail, fix) = match missing {
                Status::Warn => (format!("{name} does not exist yet"), "sync creates it"),
                _ => (
                    format!("{name} not found"),
                    "give a well-known name (inbox, archive, ...), a display name, or Parent/Child",
                ),
            };
            r.push(scope, step, missing, detail, Some(fix));
        }
        Err(e) => r.fail(scope, step, &e, FIX_POLICY),
    }
}

/// The `permissions` step: the token is for Graph and holds one of `wanted`. False when
/// it fails.
async fn permissions(r: &mut Report, scope: &str, g: &Graph, wanted: &[&str]) -> bool {
    let token = match g.token().await {
        Ok(t) => t,
        Err(e) => {
            r.fail(scope, "permissions", &e, "see the oauth2 step");
            return false;
        }
    };
    let Some(claims) = jwt_claims(token.expose()) else {
        r.push(
            scope,
            "permissions",
            Status::Warn,
            "the access token is not a JWT: its permissions cannot be shown".into(),
            None,
        );
        return true;
    };
    let aud = claims["aud"].as_str().unwrap_or("");
    if !AUDIENCES.contains(&aud) {
        r.push(
            scope,
            "permissions",
            Status::Fail,
            format!("the access token is for {aud:?}, not Microsoft Graph"),
            Some("set oauth2 `scope = \"https://graph.microsoft.com/.default\"` (app-only)"),
        );
        return false;
    }
    let granted = granted(&claims);
    let shown = granted.join(" ");
    if granted.iter().any(|p| wanted.contains(&p.as_str())) {
        r.ok(
            scope,
            "permissions",
            format!("token for Graph with {shown}"),
        );
        return true;
    }
    let fix = format!(
        "in Entra ID, App registrations > API permissions: add Microsoft Graph {} \
         (Application), then \"Grant admin consent\"",
        wanted.first().copied().unwrap_or_default()
    );
    r.push(
        scope,
        "permissions",
        Status::Fail,
        format!(
            "the token lacks {} (it has: {})",
            wanted.first().copied().unwrap_or_default(),
            if shown.is_empty() { "nothing" } else { &shown }
        ),
        Some(&fix),
    );
    false
}

/// The payload of a JWT, unverified.
fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The permissions a token carries: app roles (`roles`, an array, or a space-separated
/// string) and delegated scopes (`scp`, or `scope`).
fn granted(claims: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["roles", "scp", "scope"] {
        match &claims[key] {
            serde_json::Value::Array(a) => {
                out.extend(a.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
            serde_json::Value::String(s) => out.extend(s.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_scopes_are_read_from_the_payload() {
        let enc = |v: serde_json::Value| {
            let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!("e30.{p}.sig")
        };
        let app = jwt_claims(&enc(serde_json::json!({
            "aud": "https://graph.microsoft.com", "roles": ["Mail.Send", "Mail.ReadWrite"] })))
        .unwrap();
        assert_eq!(granted(&app), ["Mail.ReadWrite", "Mail.Send"]);
        let user = jwt_claims(&enc(
            serde_json::json!({ "scp": "Mail.ReadWrite.Shared User.Read" }),
        ))
        .unwrap();
        assert_eq!(granted(&user), ["Mail.ReadWrite.Shared", "User.Read"]);
        assert!(jwt_claims("opaque-token").is_none());
    }
}
