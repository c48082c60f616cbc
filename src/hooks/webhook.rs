//! Webhooks, Standard Webhooks v1: a POST of the event's JSON with `webhook-id` (the event's
//! id, the same on every attempt), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the
//! base64 part of the hook's `whsec_...` secret. No redirects, a timeout on every request,
//! TLS as for every other connection ([`crate::oauth2::http::client`]). Never logs the key or
//! the signature.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The `webhook-signature` header value for one attempt.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status; 0 when there was none (connection refused, timeout, ...).
    pub status: u16,
    /// `Retry-After` in seconds, when the answer had one.
    pub retry_after: Option<u64>,
    /// The start of the body, or what went wrong.
    pub text: String,
}

/// POSTs `body` (event `id`) to `url`, signed with `key`, within `timeout`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &[u8],
    id: &str,
    body: &str,
    timeout: Duration,
) -> Answer {
    let timestamp = crate::time::now();
    let request = client
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(key, id, timestamp, body))
        .body(body.to_owned());
    let reply = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return failure(&crate::error::chain_text(&e.without_url())),
        Err(_) => return failure(&format!("no answer within {} s", timeout.as_secs())),
    };
    let status = reply.status().as_u16();
    let retry_after = reply
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let text = match tokio::time::timeout(timeout, reply.bytes()).await {
        Ok(Ok(b)) => {
            String::from_utf8_lossy(&b[..b.len().min(crate::store::MAX_RESPONSE)]).into_owned()
        }
        _ => String::new(),
    };
    Answer {
        status,
        retry_after,
        text,
    }
}

fn failure(why: &str) -> Answer {
    Answer {
        status: 0,
        retry_after: None,
        text: why.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let key = crate::secret::whsec_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(crate::secret::whsec_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(crate::secret::whsec_key("whsec_!!").is_none());
    }
}
