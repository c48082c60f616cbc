//! Microsoft Graph: the mail API for Outlook 365 tenants without IMAP or SMTP AUTH.
//!
//! [`Graph`] is one mailbox's client: reqwest over the project's rustls setup (`ca-file`
//! honoured), a bearer token from the mailbox's [`TokenSource`] (asked for anew once when
//! Graph refuses it), every request under the mailbox's timeout. Graph allows an app four
//! requests at once per mailbox, so a per-mailbox [`Limiter`] lets at most
//! [`MAX_CONCURRENT`] through, and a `429` or `503` pauses the whole mailbox for the
//! `Retry-After` the server asked for before the request is tried again.
//!
//! What it speaks: folder lookup (well-known names such as `inbox`, else by display name,
//! `Parent/Child` for nested folders), the message delta query of a folder
//! ([`Graph::delta`]), a message as raw MIME (`$value`), post-actions (mark read, move,
//! delete) in JSON batches of up to 20, and `sendMail` with a MIME body ([`Graph::send_mail`]).
//! Reading a folder into tickets is [`sync`]'s; this module knows nothing of tickets.
//! Links the server hands out (`@odata.nextLink`, `@odata.deltaLink`) are followed only on
//! the configured `graph-url`'s own origin, so the token never goes anywhere else.

pub mod sync;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::DEFAULT_GRAPH_URL;
use crate::error::{Error, Result};
use crate::oauth2::TokenSource;
use crate::secret::Revealed;

/// Requests at once per mailbox (Graph's limit per app and mailbox is 4).
pub const MAX_CONCURRENT: usize = 4;
/// A throttled request is tried this many times more.
const MAX_RETRIES: u32 = 6;
/// How many times a read that met a `500` or `502` is asked again.
const FAULT_RETRIES: u32 = 3;
/// The longest `Retry-After` honoured as given; longer ones are cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Messages per delta page asked for (`Prefer: odata.maxpagesize`).
const PAGE_SIZE: u32 = 50;
/// Requests per JSON batch (Graph's maximum).
const BATCH_MAX: usize = 20;
/// Folders that Graph knows by a well-known name.
const WELL_KNOWN: &[&str] = &[
    "inbox",
    "archive",
    "deleteditems",
    "drafts",
    "junkemail",
    "sentitems",
];

/// At most [`MAX_CONCURRENT`] requests at once, and none before a throttled reply's
/// `Retry-After` has passed.
#[derive(Debug)]
pub struct Limiter {
    slots: Semaphore,
    not_before: std::sync::Mutex<Option<Instant>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            slots: Semaphore::new(MAX_CONCURRENT),
            not_before: std::sync::Mutex::new(None),
        }
    }
}

impl Limiter {
    /// A slot, once the mailbox is not paused.
    async fn acquire(&self) -> Result<SemaphorePermit<'_>> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::Internal("the Graph limiter closed".into()))?;
        loop {
            let until = *self.not_before.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return Ok(permit),
            }
        }
    }

    /// Pauses every request of the mailbox for `d`.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut nb = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        *nb = Some(nb.map_or(until, |t| t.max(until)));
    }
}

/// The limiter of `user`'s mailbox at the API `origin`: one per mailbox in the process, so
/// the reader of a `watch` and the sender of acknowledgements share Graph's four slots.
fn limiter_for(origin: &str, user: &str) -> Arc<Limiter> {
    use std::sync::{Mutex, OnceLock, Weak};
    static LIMITERS: OnceLock<Mutex<HashMap<String, Weak<Limiter>>>> = OnceLock::new();
    let key = format!("{origin} {}", user.to_ascii_lowercase());
    let mut all = LIMITERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    all.retain(|_, l| l.strong_count() > 0);
    if let Some(l) = all.get(&key).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(Limiter::default());
    all.insert(key, Arc::downgrade(&l));
    l
}

/// A folder as Graph names it.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
}

/// One entry of a delta page.
#[derive(Debug, Clone)]
pub struct DeltaItem {
    /// The message's id.
    pub id: String,
    /// It left the folder (moved or deleted).
    pub removed: bool,
    /// `internetMessageId`, without brackets.
    pub message_id: Option<String>,
    /// `isRead`.
    pub is_read: bool,
    /// `receivedDateTime` in Unix seconds.
    pub received: Option<i64>,
}

/// Where the delta query goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// More pages of this round (`@odata.nextLink`).
    Next(String),
    /// The round is complete; the next one starts here (`@odata.deltaLink`).
    Delta(String),
}

impl Link {
    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            Link::Next(u) | Link::Delta(u) => u,
        }
    }
}

/// One answer of the delta query.
#[derive(Debug)]
pub enum Delta {
    /// A page of changes and where to go on.
    Page(Vec<DeltaItem>, Link),
    /// `410 Gone`: the link has expired; only a full listing helps.
    Gone,
}

/// A message's MIME.
#[derive(Debug)]
pub enum Mime {
    /// The whole message.
    Whole(Vec<u8>),
    /// The whole message, over [`crate::spool::SPOOL_OVER`] bytes: in a spool file.
    Spooled(crate::spool::Spool),
    /// Over the size limit: its header (as far as it was read) and its size.
    TooLarge { head: Vec<u8>, size: u64 },
}

/// What happens to a message once its ticket is committed.
#[derive(Debug, Clone)]
pub enum PostAction {
    /// `PATCH isRead = true`.
    Read,
    /// `DELETE` (Graph moves it to Deleted Items).
    Delete,
    /// `POST move` to this folder id.
    Move(String),
}

/// A request that failed, and whether the server may have acted on it.
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub error: Error,
    /// The request may have reached the server (no answer came).
    pub maybe_sent: bool,
}

/// One mailbox's Graph client.
#[derive(Debug)]
pub struct Graph {
    /// The API root, without a trailing slash.
    api: String,
    /// `scheme://host[:port]` of the API: links elsewhere are refused.
    origin: String,
    /// `{api}/users/{mailbox}`.
    user_url: String,
    /// The mailbox, for messages.
    user: String,
    host: String,
    http: reqwest::Client,
    token: Arc<TokenSource>,
    limiter: Arc<Limiter>,
    timeout: Duration,
    /// Folders found so far, by the name they were asked for: a `watch` session looks its
    /// folder up once, not on every poll.
    folders: std::sync::Mutex<HashMap<String, Folder>>,
}

impl Graph {
    /// A client for `user`'s mailbox at `api` (default: Microsoft's v1.0 root).
    pub fn new(
        api: Option<&str>,
        user: &str,
        ca_file: Option<&std::path::Path>,
        token: Arc<TokenSource>,
        timeout: Duration,
    ) -> Result<Graph> {
        let api = api.unwrap_or(DEFAULT_GRAPH_URL).trim_end_matches('/');
        let bad = |m: String| Error::Protocol {
            host: api.to_owned(),
            message: m,
        };
        let mut u = reqwest::Url::parse(api).map_err(|e| bad(e.to_string()))?;
        let origin = u.origin().ascii_serialization();
        // As the URL library writes it, so that `user_url` starts with it.
        let api = u.as_str().trim_end_matches('/').to_owned();
        u.path_segments_mut()
            .map_err(|()| bad("not a base URL".into()))?
            .push("users")
            .push(user);
        let limiter = limiter_for(&origin, user);
        Ok(Graph {
            host: crate::oauth2::http::host_of(&api),
            api,
            origin,
            user_url: u.to_string(),
            user: user.to_owned(),
            http: crate::oauth2::http::client(ca_file)?,
            token,
            limiter,
            timeout,
            folders: Default::default(),
        })
    }

    /// The API's `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The mailbox.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The current access token (for `doctor`'s look at its roles).
    pub async fn token(&self) -> Result<Revealed> {
        self.token.token().await
    }

    /// Sends one request, asking for a new token once when Graph refuses this one, and
    /// waiting out `429` / `503` / `504` as `Retry-After` says (and a `500` / `502` of a
    /// `GET` after a backoff). Returns the final response
    /// (any status) with the slot it holds until its body is read.
    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<(&'static str, Vec<u8>)>,
        what: &str,
    ) -> std::result::Result<(reqwest::Response, SemaphorePermit<'_>), Failed> {
        let fail = |error| Failed {
            error,
            maybe_sent: false,
        };
        let mut token = self.token.token().await.map_err(fail)?;
        let (mut renewed, mut attempt) = (false, 0u32);
        loop {
            let permit = self.limiter.acquire().await.map_err(fail)?;
            let mut rb = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose())
                .timeout(self.timeout);
            if url.contains("/delta") {
                rb = rb.header("Prefer", format!("odata.maxpagesize={PAGE_SIZE}"));
            }
            if let Some((ctype, bytes)) = &body {
                rb = rb.header("Content-Type", *ctype).body(bytes.clone());
            }
            let resp = rb.send().await.map_err(|e| self.net_failed(&e, what))?;
            let status = resp.status().as_u16();
            if status == 401 && !renewed {
                drop(permit);
                tracing::debug!(what, "Graph refused the token; asking for a new one");
                token = self.token.renew(&token).await.map_err(fail)?;
                renewed = true;
                continue;
            }
            // A read that meets a fault of the service (500, 502: no Retry-After) is asked
            // again too, a few times, after 1, 2, 4 s; a write is not, it may have happened.
            let faulted = method == Method::GET && matches!(status, 500 | 502);
            let tries = if faulted { FAULT_RETRIES } else { MAX_RETRIES };
            if (faulted || matches!(status, 429 | 503 | 504)) && attempt < tries {
                let wait = retry_after(resp.headers()).unwrap_or(Duration::from_secs(1 << attempt));
                tracing::info!(
                    status,
                    wait_ms = wait.as_millis() as u64,
                    what,
                    "{}",
                    if faulted {
                        "Graph failed; asking again"
                    } else {
                        "Graph asks to wait"
                    }
                );
                self.limiter.pause(wait.min(MAX_RETRY_AFTER));
                attempt += 1;
                continue;
            }
            return Ok((resp, permit));
        }
    }

    fn net_failed(&self, e: &reqwest::Error, what: &str) -> Failed {
        let error = if e.is_timeout() {
            Error::Timeout {
                host: self.host.clone(),
                what: what.to_owned(),
                secs: self.timeout.as_secs(),
            }
        } else {
            Error::Network {
                host: self.host.clone(),
                message: format!("{what}: {}", crate::oauth2::http::describe(e)),
            }
        };
        Failed {
            error,
            maybe_sent: !e.is_connect(),
        }
    }

    /// Sends a request and reads its JSON body; a status other than 2xx is an error, except
    /// the ones in `pass` (returned with their body).
    async fn call_json(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        what: &str,
        pass: &[u16],
    ) -> Result<(u16, Value)> {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let (resp, _permit) = self
            .request(method, url, body, what)
            .await
            .map_err(|f| f.error)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.net_failed(&e, what).error)?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
                host: self.host.clone(),
                message: format!("{what}: HTTP {status}, and the body is not JSON: {e}"),
            })?
        };
        if (200..300).contains(&status) || pass.contains(&status) {
            Ok((status, v))
        } else {
            Err(self.refused(status, &v, what))
        }
    }

    /// The error for a refusal: `401` the token's (the OAuth2 settings), `403` the
    /// permissions' (naming what is missing), throttling and `5xx` transient, the rest the
    /// server's answer.
    fn refused(&self, status: u16, body: &Value, what: &str) -> Error {
        let code = body["error"]["code"].as_str().unwrap_or("");
        let text = body["error"]["message"].as_str().unwrap_or("");
        let said = format!("HTTP {status} {code}: {text}");
        match status {
            401 => Error::OAuth2 {
                account: format!("Graph mailbox {}", self.user),
                message: format!(
                    "Graph refused the access token while {what} ({said}); check the app's \
                     consent and the oauth2 scope (https://graph.microsoft.com/.default for \
                     app-only)"
                ),
                relogin: false,
            },
            403 => Error::Auth {
                host: self.host.clone(),
                user: self.user.clone(),
                message: format!(
                    "access denied while {what} ({said}): the app needs the {} permission \
                     (application permission with admin consent, or delegated on a shared \
                     mailbox), and an application access policy or RBAC scope that includes \
                     this mailbox",
                    if what.contains("sending") {
                        "Mail.Send"
                    } else {
                        "Mail.ReadWrite"
                    }
                ),
            },
            429 | 500..=599 => Error::Network {
                host: self.host.clone(),
                message: format!("{what}: {said}"),
            },
            _ => Error::Protocol {
                host: self.host.clone(),
                message: format!("{what}: {said}"),
            },
        }
    }

    /// A link from the server, if it points at our API.
    fn own_link<'a>(&self, link: &'a str) -> Result<&'a str> {
        let on_origin = link
            .strip_prefix(&self.origin)
            .is_some_and(|rest| rest.starts_with('/'));
        if !on_origin {
            return Err(Error::Protocol {
                host: self.host.clone(),
                message: format!(
                    "the server links to {}, outside {}: not following it with our token",
                    crate::oauth2::http::host_of(link),
                    self.origin
                ),
            });
        }
        Ok(link)
    }

    /// `{user_url}/segments...`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url> {
        let mut u = reqwest::Url::parse(&self.user_url).map_err(|e| Error::Protocol {
            host: self.host.clone(),
            message: e.to_string(),
        })?;
        if let Ok(mut p) = u.path_segments_mut() {
            p.extend(segments);
        }
        Ok(u)
    }

    /// The folder `name`: a well-known name (`INBOX`, `archive`, ...), a display name, or
    /// `Parent/Child`. `None` when there is no such folder.
    pub async fn folder(&self, name: &str) -> Result<Option<Folder>> {
        let known = self
            .folders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if known.is_some() {
            return Ok(known);
        }
        let found = self.look_up_folder(name).await?;
        if let Some(f) = &found {
            let mut map = self.folders.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(name.to_owned(), f.clone());
        }
        Ok(found)
    }

    async fn look_up_folder(&self, name: &str) -> Result<Option<Folder>> {
        let lower = name.to_ascii_lowercase();
        if WELL_KNOWN.contains(&lower.as_str()) {
            let what = format!("looking up folder {name}");
            let u = self.url(&["mailFolders", &lower])?;
            let (status, v) = self
                .call_json(Method::GET, u.as_str(), None, &what, &[404])
                .await?;
            return Ok((status != 404).then(|| folder_of(&v)).flatten());
        }
        let mut parent: Option<Folder> = None;
        for part in name.split('/') {
            let mut u = match &parent {
                None => self.url(&["mailFolders"])?,
                Some(p) => self.url(&["mailFolders", &p.id, "childFolders"])?,
            };
            u.query_pairs_mut().append_pair(
                "$filter",
                &format!("displayName eq '{}'", part.replace('\'', "''")),
            );
            let what = format!("looking up folder {name}");
            let (_, v) = self
                .call_json(Method::GET, u.as_str(), None, &what, &[])
                .await?;
            let found = v["value"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(folder_of);
            match found {
                Some(f) => parent = Some(f),
                None => return Ok(None),
            }
        }
        Ok(parent)
    }

    /// The folder `name`, created at the top level when missing.
    pub async fn ensure_folder(&self, name: &str) -> Result<Folder> {
        if let Some(f) = self.folder(name).await? {
            return Ok(f);
        }
        let what = format!("creating folder {name}");
        let u = self.url(&["mailFolders"])?;
        let (_, v) = self
            .call_json(
                Method::POST,
                u.as_str(),
                Some(json!({ "displayName": name })),
                &what,
                &[],
            )
            .await?;
        folder_of(&v).ok_or_else(|| Error::Protocol {
            host: self.host.clone(),
            message: format!("{what}: the answer names no folder"),
        })
    }

    /// The first delta request of a folder: a full listing.
    pub fn delta_start(&self, folder: &Folder) -> Result<String> {
        let mut u = self.url(&["mailFolders", &folder.id, "messages", "delta"])?;
        u.query_pairs_mut()
            .append_pair("$select", "internetMessageId,isRead,receivedDateTime");
        Ok(u.to_string())
    }

    /// One page of the delta query at `link` (from [`Graph::delta_start`] or the server).
    pub async fn delta(&self, link: &str) -> Result<Delta> {
        let link = self.own_link(link)?;
        let (status, v) = self
            .call_json(
                Method::GET,
                link,
                None,
                "reading the folder's changes",
                &[410],
            )
            .await?;
        if status == 410 {
            return Ok(Delta::Gone);
        }
        let next = match (
            v["@odata.nextLink"].as_str(),
            v["@odata.deltaLink"].as_str(),
        ) {
            (Some(n), _) => Link::Next(n.to_owned()),
            (None, Some(d)) => Link::Delta(d.to_owned()),
            (None, None) => {
                return Err(Error::Protocol {
                    host: self.host.clone(),
                    message: "a delta page without @odata.nextLink or @odata.deltaLink".into(),
                });
            }
        };
        let items = v["value"]
            .as_array()
            .map(|a| a.iter().filter_map(delta_item).collect())
            .unwrap_or_default();
        Ok(Delta::Page(items, next))
    }

    /// A message's MIME (`$value`); over `max` bytes only its header is kept, over
    /// [`crate::spool::SPOOL_OVER`] it goes on into a spool file in `spool_dir`. `None` when
    /// the message is gone.
    pub async fn mime(
        &self,
        id: &str,
        max: u64,
        spool_dir: &std::path::Path,
    ) -> Result<Option<Mime>> {
        let what = "fetching a message";
        let u = self.url(&["messages", id, "$value"])?;
        let (mut resp, _permit) = self
            .request(Method::GET, u.as_str(), None, what)
            .await
            .map_err(|f| f.error)?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            let body = resp.bytes().await.unwrap_or_default();
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(self.refused(status, &v, what));
        }
        let declared = resp.content_length();
        // Once spooled, `bytes` keeps only the start, where the header is.
        let (mut bytes, mut spool, mut total) = (Vec::new(), None::<crate::spool::Spool>, 0u64);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.net_failed(&e, what).error)?
        {
            total += chunk.len() as u64;
            if total > max {
                bytes.extend_from_slice(&chunk[..chunk.len().min(HEAD_KEPT)]);
                let size = declared.unwrap_or(total);
                return Ok(Some(Mime::TooLarge {
                    head: header_of(bytes),
                    size,
                }));
            }
            match spool.as_mut() {
                Some(s) => s.append(&chunk)?,
                None => {
                    bytes.extend_from_slice(&chunk);
                    if total > crate::spool::SPOOL_OVER {
                        let mut s = crate::spool::Spool::create(spool_dir)?;
                        s.append(&bytes)?;
                        bytes.truncate(HEAD_KEPT);
                        spool = Some(s);
                    }
                }
            }
        }
        Ok(Some(match spool {
            Some(s) => Mime::Spooled(s),
            None => Mime::Whole(bytes),
        }))
    }

    /// Runs `action` on the messages `ids` in JSON batches; returns the ids that are done
    /// (including those already gone). A request Graph throttles is sent again after its
    /// `Retry-After`; another refusal is an error.
    pub async fn post_action(&self, ids: &[String], action: &PostAction) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for chunk in ids.chunks(BATCH_MAX) {
            let mut todo: Vec<&String> = chunk.iter().collect();
            for attempt in 0..=MAX_RETRIES {
                let (ok, again, wait) = self.batch_once(&todo, action).await?;
                done.extend(ok);
                if again.is_empty() {
                    break;
                }
                if attempt == MAX_RETRIES {
                    return Err(Error::Network {
                        host: self.host.clone(),
                        message: format!("{} post-actions still throttled", again.len()),
                    });
                }
                self.limiter.pause(wait.min(MAX_RETRY_AFTER));
                todo = again;
            }
        }
        Ok(done)
    }

    /// One JSON batch: the ids done, those to send again, and how long to wait first.
    async fn batch_once<'a>(
        &self,
        ids: &[&'a String],
        action: &PostAction,
    ) -> Result<(Vec<String>, Vec<&'a String>, Duration)> {
        let rel = self
            .user_url
            .strip_prefix(&self.api)
            .unwrap_or(&self.user_url);
        let requests: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| batch_request(i, rel, id, action))
            .collect();
        let what = "running post-actions";
        let url = format!("{}/$batch", self.api);
        let (_, v) = self
            .call_json(
                Method::POST,
                &url,
                Some(json!({ "requests": requests })),
                what,
                &[],
            )
            .await?;
        let (mut ok, mut again, mut wait) = (Vec::new(), Vec::new(), Duration::from_secs(1));
        for r in v["responses"].as_array().into_iter().flatten() {
            let i: usize = r["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            let Some(id) = ids.get(i) else { continue };
            let status = u16::try_from(r["status"].as_u64().unwrap_or(0)).unwrap_or(0);
            match status {
                200..=299 | 404 => ok.push((*id).clone()),
                429 | 503 | 504 => {
                    let secs = r["headers"]["Retry-After"]
                        .as_str()
                        .and_then(|s| s.trim().parse().ok())
                        .or_else(|| r["headers"]["Retry-After"].as_u64());
                    wait = wait.max(Duration::from_secs(secs.unwrap_or(1)));
                    again.push(*id);
                }
                _ => return Err(self.refused(status, &r["body"], what)),
            }
        }
        Ok((ok, again, wait))
    }

    /// `sendMail` with `raw` as MIME. `Err` with `maybe_sent` when the request may have
    /// reached the server.
    pub async fn send_mail(&self, raw: &[u8]) -> std::result::Result<(), Failed> {
        let what = "sending a message";
        let u = self.url(&["sendMail"]).map_err(|error| Failed {
            error,
            maybe_sent: false,
        })?;
        let body = base64::engine::general_purpose::STANDARD
            .encode(raw)
            .into_bytes();
        let (resp, _permit) = self
            .request(Method::POST, u.as_str(), Some(("text/plain", body)), what)
            .await?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(Failed {
            error: self.refused(status, &v, what),
            maybe_sent: false,
        })
    }
}

fn batch_request(i: usize, rel: &str, id: &str, action: &PostAction) -> Value {
    let seg: String = url_segment(id);
    let url = format!("{rel}/messages/{seg}");
    let json_header = json!({ "Content-Type": "application/json" });
    match action {
        PostAction::Read => json!({ "id": i.to_string(), "method": "PATCH", "url": url,
            "headers": json_header, "body": { "isRead": true } }),
        PostAction::Delete => json!({ "id": i.to_string(), "method": "DELETE", "url": url }),
        PostAction::Move(dest) => json!({ "id": i.to_string(), "method": "POST",
            "url": format!("{url}/move"), "headers": json_header,
            "body": { "destinationId": dest } }),
    }
}

/// Percent-encodes one path segment.
fn url_segment(s: &str) -> String {
    let mut u = reqwest::Url::parse("http://x/").unwrap_or_else(|_| unreachable!());
    if let Ok(mut p) = u.path_segments_mut() {
        p.push(s);
    }
    u.path().trim_start_matches('/').to_owned()
}

fn folder_of(v: &Value) -> Option<Folder> {
    Some(Folder {
        id: v["id"].as_str()?.to_owned(),
        name: v["displayName"].as_str().unwrap_or("").to_owned(),
    })
}

fn delta_item(v: &Value) -> Option<DeltaItem> {
    Some(DeltaItem {
        id: v["id"].as_str()?.to_owned(),
        removed: v.get("@removed").is_some(),
        message_id: v["internetMessageId"]
            .as_str()
            .map(crate::message::clean_id)
            .filter(|s| !s.is_empty()),
        is_read: v["isRead"].as_bool().unwrap_or(false),
        received: v["receivedDateTime"]
            .as_str()
            .and_then(crate::time::parse_rfc3339),
    })
}

/// The header of a message cut off somewhere in its body: up to the first blank line
/// within its first 64 KiB.
/// How much of a message's start is kept for its header when the message is too large.
const HEAD_KEPT: usize = 64 << 10;

fn header_of(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(HEAD_KEPT);
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(bytes.len().min(HEAD_KEPT));
    bytes.truncate(end);
    bytes
}

/// `Retry-After` in seconds (Graph sends seconds, never a date).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_message_keeps_its_header() {
        assert_eq!(header_of(b"A: b\r\n\r\nbody".to_vec()), b"A: b\r\n\r\n");
        assert_eq!(header_of(b"A: b\n\nbody".to_vec()), b"A: b\n\n");
        assert_eq!(header_of(b"A: b".to_vec()), b"A: b");
    }

    #[test]
    fn batch_urls_encode_the_id() {
        let r = batch_request(3, "/users/s@x", "AA/b=", &PostAction::Read);
        assert_eq!(r["url"], "/users/s@x/messages/AA%2Fb=");
        assert_eq!(r["id"], "3");
        assert_eq!(r["body"]["isRead"], true);
    }

    #[test]
    fn one_mailbox_has_one_limiter_in_the_process() {
        let a = limiter_for("https://graph.test", "Support@x.example");
        let b = limiter_for("https://graph.test", "support@x.example");
        let other = limiter_for("https://graph.test", "sales@x.example");
        assert!(
            Arc::ptr_eq(&a, &b),
            "reader and sender of a mailbox share it"
        );
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b));
        let again = limiter_for("https://graph.test", "support@x.example");
        assert_eq!(again.slots.available_permits(), MAX_CONCURRENT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_back() {
        let l = Limiter::default();
        l.pause(Duration::from_secs(7));
        let t0 = Instant::now();
        let _p = l.acquire().await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(7));
        let more: Vec<_> = futures_util::future::join_all((0..3).map(|_| l.acquire())).await;
        assert_eq!(more.iter().filter(|p| p.is_ok()).count(), 3);
        assert!(l.slots.try_acquire().is_err(), "four slots at most");
    }
}
