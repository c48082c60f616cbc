//! The one HTTP client, for token endpoints: reqwest over our rustls setup (ring, the
//! system's and the bundled roots, plus `ca-file`), HTTP/1.1, every request under a timeout,
//! no redirects (a token endpoint that redirects is misconfigured, and a form with secrets
//! must not follow it). Replies are read as RFC 6749 token or error responses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Result};

/// Clients by `ca-file`: built once, reused (they pool their connections).
fn clients() -> &'static Mutex<HashMap<Option<PathBuf>, reqwest::Client>> {
    static CLIENTS: OnceLock<Mutex<HashMap<Option<PathBuf>, reqwest::Client>>> = OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

/// The client that trusts the usual roots plus `ca_file`.
pub fn client(ca_file: Option<&Path>) -> Result<reqwest::Client> {
    let key = ca_file.map(Path::to_path_buf);
    let mut map = clients().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let mut tls = (*crate::tls::client_config(ca_file)?).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let c = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(15))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("mailticket/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client setup: {e}")))?;
    map.insert(key, c.clone());
    Ok(c)
}

/// The `host[:port]` of a URL, for messages.
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| url.to_owned())
}

/// What a token endpoint answered.
#[derive(Debug)]
pub enum Reply {
    /// 2xx with a JSON object.
    Ok(serde_json::Map<String, serde_json::Value>),
    /// An RFC 6749 error response (`error`, `error_description`), with the HTTP status.
    Refused {
        status: u16,
        error: String,
        description: String,
    },
}

/// POSTs `form` to `url` and reads the JSON reply. Network trouble, timeouts, 5xx, 429 and
/// replies that are not JSON are errors that name the host (transient); 4xx with an RFC 6749
/// error body is a [`Reply::Refused`].
pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    timeout: Duration,
) -> Result<Reply> {
    let host = host_of(url);
    let net = |message: String| Error::Network {
        host: host.clone(),
        message,
    };
    let request = async {
        let resp = client
            .post(url)
            .header("Accept", "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| {
                let mut m = describe(&e);
                if m.contains("UnknownIssuer") {
                    m.push_str(
                        " (the certificate is not signed by a trusted CA; for a private CA set \
                         oauth2 ca-file)",
                    );
                }
                net(format!("token endpoint: {m}"))
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| {
            net(format!(
                "token endpoint: reading the reply: {}",
                describe(&e)
            ))
        })?;
        Ok::<_, Error>((status, body))
    };
    let (status, body) = match tokio::time::timeout(timeout, request).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Timeout {
                host,
                what: "waiting for the OAuth2 token endpoint".into(),
                secs: timeout.as_secs(),
            });
        }
    };
    read_reply(status, &body).map_err(net)
}

/// What the endpoint's status and body say: a token response, an RFC 6749 refusal, or why it
/// is neither (the error text).
fn read_reply(status: u16, body: &[u8]) -> std::result::Result<Reply, String> {
    let json: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(body).ok();
    match (status, json) {
        (200..=299, Some(map)) => Ok(Reply::Ok(map)),
        (400..=499, Some(map)) if status != 429 && map.contains_key("error") => {
            let text = |k: &str| {
                map.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(Reply::Refused {
                status,
                error: text("error"),
                // Microsoft's descriptions run over several lines with trace ids.
                description: text("error_description")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
        (status, json) => {
            let what = if json.is_some() {
                "JSON without a token".to_owned()
            } else {
                let snippet: String = String::from_utf8_lossy(body)
                    .chars()
                    .take(80)
                    .filter(|c| !c.is_control())
                    .collect();
                format!("not JSON: {snippet:?}")
            };
            Err(format!("token endpoint answered HTTP {status} ({what})"))
        }
    }
}

/// A reqwest error with its causes (reqwest's own text is often just "error sending request").
pub fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A string field of a reply.
pub fn field<'a>(map: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> Option<&'a str> {
    map.get(k)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

/// A number of seconds, written as a number or (some servers) as a string.
pub fn seconds(map: &serde_json::Map<String, serde_json::Value>, k: &str) -> Option<i64> {
    match map.get(k)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_names_host_and_port() {
        assert_eq!(
            host_of("https://login.example.com/t/oauth2/token"),
            "login.example.com"
        );
        assert_eq!(host_of("http://127.0.0.1:8080/token"), "127.0.0.1:8080");
        assert_eq!(host_of("nonsense"), "nonsense");
    }

    #[test]
    fn seconds_accepts_numbers_and_strings() {
        let m: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"a": 3599, "b": "3600", "c": null}"#).unwrap();
        assert_eq!(seconds(&m, "a"), Some(3599));
        assert_eq!(seconds(&m, "b"), Some(3600));
        assert_eq!(seconds(&m, "c"), None);
    }
}
