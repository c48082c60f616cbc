//! The SASL side of OAuth2: the XOAUTH2 and OAUTHBEARER (RFC 7628) initial responses, and the
//! server's error challenge. On a bad token the server does not answer NO at once: it sends a
//! base64 JSON challenge (`{"status":"401","schemes":"bearer","scope":"..."}`) and waits. The
//! client must answer (an empty response for XOAUTH2, `^A` for OAUTHBEARER) so the server
//! ends the exchange with NO / 535; a client that gives up instead leaves the command hanging.

use std::fmt;

use crate::config::AuthMech;
use crate::secret::Revealed;

/// The SASL mechanism name.
pub fn mechanism(mech: AuthMech) -> &'static str {
    match mech {
        AuthMech::Oauthbearer => "OAUTHBEARER",
        _ => "XOAUTH2",
    }
}

/// The initial client response carrying `token` for `user`.
pub fn initial_response(
    mech: AuthMech,
    user: &str,
    token: &Revealed,
    host: &str,
    port: u16,
) -> Vec<u8> {
    match mech {
        AuthMech::Oauthbearer => format!(
            "n,a={},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
            gs2_escape(user),
            token.expose()
        ),
        _ => format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose()),
    }
    .into_bytes()
}

/// The answer to an error challenge that makes the server finish with a failure.
pub fn abort_response(mech: AuthMech) -> &'static [u8] {
    match mech {
        AuthMech::Oauthbearer => b"\x01",
        _ => b"",
    }
}

/// RFC 5801's escaping of the authorization identity: `,` and `=`.
fn gs2_escape(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// What the server's error challenge said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `status`: "401", "invalid_token", "insufficient_scope", ...
    pub status: Option<String>,
    /// `scope`: the scope the server wanted.
    pub scope: Option<String>,
    /// The challenge as text when it was not the expected JSON.
    pub raw: Option<String>,
}

impl ServerError {
    /// Reads a decoded challenge.
    pub fn parse(challenge: &[u8]) -> ServerError {
        let json: Option<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(challenge).ok();
        match json {
            Some(map) => {
                let text = |k: &str| {
                    map.get(k).map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                };
                ServerError {
                    status: text("status"),
                    scope: text("scope"),
                    raw: None,
                }
            }
            None => ServerError {
                raw: Some(
                    String::from_utf8_lossy(challenge)
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect(),
                ),
                ..ServerError::default()
            },
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = &self.status {
            parts.push(format!("status {s}"));
        }
        if let Some(s) = &self.scope {
            parts.push(format!("scope {s:?}"));
        }
        if let Some(r) = &self.raw {
            parts.push(format!("challenge {r:?}"));
        }
        if parts.is_empty() {
            f.write_str("no details")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// An IMAP `AUTHENTICATE` conversation for async-imap: the first continuation gets the
/// token, any later one is an error challenge, recorded and answered so the server ends it.
pub struct ImapAuth<'a> {
    /// The initial response.
    pub initial: Vec<u8>,
    /// The mechanism (for the abort answer).
    pub mech: AuthMech,
    /// Continuations seen so far.
    pub steps: usize,
    /// Where the server's error challenge goes.
    pub error: &'a mut Option<ServerError>,
}

impl async_imap::Authenticator for ImapAuth<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        self.steps += 1;
        if self.steps == 1 {
            return std::mem::take(&mut self.initial);
        }
        *self.error = Some(ServerError::parse(challenge));
        abort_response(self.mech).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_responses_have_the_documented_shape() {
        let t = Revealed::new("tok".into());
        assert_eq!(
            initial_response(AuthMech::Xoauth2, "a@b.c", &t, "h", 993),
            b"user=a@b.c\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(
            initial_response(AuthMech::Oauthbearer, "a=b,c", &t, "imap.example.com", 993),
            b"n,a=a=3Db=2Cc,\x01host=imap.example.com\x01port=993\x01auth=Bearer tok\x01\x01"
        );
    }

    #[test]
    fn error_challenge_is_read() {
        let e = ServerError::parse(br#"{"status":"401","schemes":"bearer","scope":"mail"}"#);
        assert_eq!(e.status.as_deref(), Some("401"));
        assert_eq!(e.scope.as_deref(), Some("mail"));
        assert_eq!(e.to_string(), r#"status 401, scope "mail""#);
        let e = ServerError::parse(br#"{"status":"invalid_token"}"#);
        assert_eq!(e.to_string(), "status invalid_token");
        let e = ServerError::parse(b"\xffnot json\x01");
        assert!(e.to_string().contains("not json"), "{e}");
    }

    #[test]
    fn the_second_continuation_is_answered_so_the_server_can_end() {
        let mut err = None;
        let mut a = ImapAuth {
            initial: b"first".to_vec(),
            mech: AuthMech::Oauthbearer,
            steps: 0,
            error: &mut err,
        };
        use async_imap::Authenticator;
        assert_eq!(a.process(b""), b"first");
        assert_eq!(a.process(br#"{"status":"invalid_token"}"#), b"\x01");
        assert_eq!(err.unwrap().status.as_deref(), Some("invalid_token"));
    }
}
