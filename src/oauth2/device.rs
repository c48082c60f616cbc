//! `mailticket oauth2 login`: the device authorization grant (RFC 8628). We ask the device
//! endpoint for a code, the user opens the URL on any machine and signs in, we poll the
//! token endpoint until they have, and store the refresh token for the account.

use std::sync::Arc;
use std::time::Duration;

use super::{Endpoint, Method, TokenSource, http, record_grant, sha256_hex};
use crate::config::Flow;
use crate::error::{Error, Result};
use crate::secret::Revealed;

/// What the user must do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prompt {
    /// The page to open.
    pub verification_uri: String,
    /// The same page with the code filled in, when the server gives one.
    pub verification_uri_complete: Option<String>,
    /// The code to type there.
    pub user_code: String,
    /// Seconds until the code expires.
    pub expires_in: i64,
    /// The server's own instructions, when it gives them (Microsoft does).
    pub message: Option<String>,
}

/// What a finished login stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoggedIn {
    /// The granted scopes.
    pub scope: Option<String>,
    /// Seconds the first access token is good for.
    pub expires_in: Option<i64>,
}

impl TokenSource {
    /// Runs the device flow; `prompt` shows the user what to do. The refresh token is stored
    /// (and wins over the config's `refresh-token` until that changes).
    pub async fn device_login(&self, prompt: impl FnOnce(&Prompt)) -> Result<LoggedIn> {
        let ep = match &self.method {
            Method::Endpoint(ep) if ep.flow == Flow::RefreshToken => ep,
            _ => {
                return Err(Error::OAuth2 {
                    account: self.label.clone(),
                    message: "only `flow = \"refresh-token\"` logs in (client-credentials and \
                              token-command need no login)"
                        .into(),
                    relogin: false,
                });
            }
        };
        let Some(device_url) = &ep.device_url else {
            return Err(Error::OAuth2 {
                account: self.label.clone(),
                message: "`device-url` is missing (the device authorization endpoint; \
                          `provider` fills it in)"
                    .into(),
                relogin: false,
            });
        };
        let Some(store) = &self.store else {
            return Err(Error::Internal("no store for the tokens".into()));
        };
        let refused = |what: &str, error: &str, description: &str| Error::OAuth2 {
            account: self.label.clone(),
            message: format!("{what}: {error} {description}")
                .trim_end()
                .to_owned(),
            relogin: false,
        };
        let mut form = vec![
            ("client_id", ep.client_id.as_str()),
            ("scope", ep.scope.as_str()),
        ];
        if let Some(s) = &ep.client_secret {
            form.push(("client_secret", s.expose()));
        }
        let start = match http::post_form(&ep.http, device_url, &form, ep.timeout).await? {
            http::Reply::Ok(map) => map,
            http::Reply::Refused {
                error, description, ..
            } => return Err(refused("the device endpoint refused", &error, &description)),
        };
        let need = |k: &str| {
            http::field(&start, k)
                .map(str::to_owned)
                .ok_or_else(|| Error::Network {
                    host: http::host_of(device_url),
                    message: format!("device endpoint answered without `{k}`"),
                })
        };
        let device_code = Revealed::new(need("device_code")?);
        let p = Prompt {
            verification_uri: need("verification_uri").or_else(|_| need("verification_url"))?,
            verification_uri_complete: http::field(&start, "verification_uri_complete")
                .map(str::to_owned),
            user_code: need("user_code")?,
            expires_in: http::seconds(&start, "expires_in").unwrap_or(900),
            message: http::field(&start, "message").map(str::to_owned),
        };
        let mut interval = http::seconds(&start, "interval").unwrap_or(5).max(1) as u64;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(p.expires_in.max(1) as u64);
        prompt(&p);

        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.expose()),
            ("client_id", ep.client_id.as_str()),
        ];
        if let Some(s) = &ep.client_secret {
            form.push(("client_secret", s.expose()));
        }
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(refused(
                    "the code expired before sign-in",
                    "expired_token",
                    "",
                ));
            }
            let obtained = crate::time::now();
            let map = match http::post_form(&ep.http, &ep.token_url, &form, ep.timeout).await {
                Ok(http::Reply::Ok(map)) => map,
                Ok(http::Reply::Refused {
                    error, description, ..
                }) => match error.as_str() {
                    "authorization_pending" => continue,
                    "slow_down" => {
                        interval += 5;
                        continue;
                    }
                    "access_denied" => {
                        return Err(refused("sign-in was declined", &error, &description));
                    }
                    "expired_token" => {
                        return Err(refused(
                            "the code expired before sign-in",
                            &error,
                            &description,
                        ));
                    }
                    _ => return Err(refused("the token endpoint refused", &error, &description)),
                },
                // A network hiccup while waiting: keep polling until the code expires.
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "polling the token endpoint");
                    continue;
                }
                Err(e) => return Err(e),
            };
            return self.store_login(ep, store, map, obtained).await;
        }
    }

    async fn store_login(
        &self,
        ep: &Endpoint,
        store: &Arc<super::TokenStore>,
        map: serde_json::Map<String, serde_json::Value>,
        obtained: i64,
    ) -> Result<LoggedIn> {
        let grant = self.read_grant(http::Reply::Ok(map), obtained, &ep.token_url)?;
        if grant.refresh.is_none() {
            return Err(Error::OAuth2 {
                account: self.label.clone(),
                message: "signed in, but the server sent no refresh token (ask for the \
                          `offline_access` scope)"
                    .into(),
                relogin: false,
            });
        }
        let done = LoggedIn {
            scope: grant.access.scope.clone(),
            expires_in: grant.access.expires.map(|e| e - obtained),
        };
        let key = self.key.clone();
        let seed_fp = ep.seed.as_ref().map(|s| sha256_hex(s.expose()));
        let store2 = store.clone();
        super::blocking(move || {
            let _lock = store2.lock(Duration::from_secs(30))?;
            let mut row = store2.load(&key)?.unwrap_or_default();
            record_grant(&mut row, &grant, None);
            // The config's refresh-token (if any) stays what it was: this login wins over it
            // until the config gets a new one.
            row.seed_fp = seed_fp;
            row.dead_fp = None;
            row.last_refresh = Some(obtained);
            store2.save(&key, &row)
        })
        .await?;
        *self.cache.lock().await = None;
        Ok(done)
    }
}
