//! `mailticket oauth2 login`: the device authorization grant (RFC 8628). We ask the device
//! endpoint for a code, the user opens the URL on any machine and signs in, we poll the
//! token endpoint until they have, and store the refresh token for the account.

use std::sync::Arc;
use std::time::Duration;

use super::store::TokenStore;
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
        let (ep, device_url, store) = self.device_setup()?;
        let (device_code, p, interval) = self.start_device(ep, device_url).await?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(p.expires_in.max(1) as u64);
        prompt(&p);
        let (map, obtained) = self
            .poll_device(ep, &device_code, interval, deadline)
            .await?;
        self.store_login(ep, store, map, obtained).await
    }

    /// The endpoint, device URL and store a device login needs, or why it cannot run.
    fn device_setup(&self) -> Result<(&Endpoint, &str, &Arc<TokenStore>)> {
        let ep = match &self.method {
            Method::Endpoint(ep) if ep.flow == Flow::RefreshToken => ep,
            _ => {
                return Err(self.refused(
                    "only `flow = \"refresh-token\"` logs in (client-credentials and \
                     token-command need no login)",
                    "",
                    "",
                ));
            }
        };
        let Some(device_url) = &ep.device_url else {
            return Err(self.refused(
                "`device-url` is missing (the device authorization endpoint; `provider` \
                 fills it in)",
                "",
                "",
            ));
        };
        let Some(store) = &self.store else {
            return Err(Error::Internal("no store for the tokens".into()));
        };
        Ok((ep, device_url, store))
    }

    /// Asks the device endpoint for a code: the device code, what to show the user, and the
    /// polling interval in seconds.
    async fn start_device(
        &self,
        ep: &Endpoint,
        device_url: &str,
    ) -> Result<(Revealed, Prompt, u64)> {
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
            } => return Err(self.refused("the device endpoint refused", &error, &description)),
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
        let interval = http::seconds(&start, "interval").unwrap_or(5).max(1) as u64;
        Ok((device_code, p, interval))
    }

    /// Polls the token endpoint until the user signs in (the token response and when it was
    /// obtained), declines, or the code expires; `slow_down` adds 5 s to the interval.
    async fn poll_device(
        &self,
        ep: &Endpoint,
        device_code: &Revealed,
        mut interval: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, i64)> {
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.expose()),
            ("client_id", ep.client_id.as_str()),
        ];
        if let Some(s) = &ep.client_secret {
            form.push(("client_secret", s.expose()));
        }
        let expired = "the code expired before sign-in";
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(self.refused(expired, "expired_token", ""));
            }
            let obtained = crate::time::now();
            let (error, description) =
                match http::post_form(&ep.http, &ep.token_url, &form, ep.timeout).await {
                    Ok(http::Reply::Ok(map)) => return Ok((map, obtained)),
                    Ok(http::Reply::Refused {
                        error, description, ..
                    }) => (error, description),
                    // A network hiccup while waiting: keep polling until the code expires.
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "polling the token endpoint");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            let what = match error.as_str() {
                "authorization_pending" => continue,
                "slow_down" => {
                    interval += 5;
                    continue;
                }
                "access_denied" => "sign-in was declined",
                "expired_token" => expired,
                _ => "the token endpoint refused",
            };
            return Err(self.refused(what, &error, &description));
        }
    }

    /// The login refused or impossible, for this account: `what`, then the endpoint's error
    /// code and description when there are any.
    fn refused(&self, what: &str, error: &str, description: &str) -> Error {
        Error::OAuth2 {
            account: self.label.clone(),
            message: format!("{what}: {error} {description}")
                .trim_end()
                .trim_end_matches(':')
                .to_owned(),
            relogin: false,
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
