//! Delivery: the configured hooks resolved (secrets read, clients built), and the policy
//! that turns each answer into what the store records. One task per hook, so a hook that
//! is down or slow never delays another; within a hook, up to [`BATCH`] tickets at once,
//! each ticket's events strictly in order (the store hands out only the oldest undelivered
//! event of a ticket).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{Attempt, DeliveryJob, StoreThread};

use super::command::{self, Ran};
use super::webhook;

/// Deliveries of one hook sent at once (each of a different ticket).
pub const BATCH: usize = 32;
/// For how long a delivery is retried before it is `failed`.
pub const RETRY_WINDOW: i64 = 86_400;
/// The longest wait between two attempts.
const MAX_WAIT: i64 = 3600;
/// Exit status of a command hook that asks to be retried later (sysexits `EX_TEMPFAIL`).
pub const EXIT_RETRY: i32 = 75;

/// Where one hook sends.
pub enum Target {
    /// A Standard Webhooks receiver.
    Webhook {
        /// The URL.
        url: String,
        /// The signing key (the base64 part of `whsec_...`, decoded). Never logged.
        key: Vec<u8>,
        /// The client (our TLS setup, no redirects).
        client: reqwest::Client,
    },
    /// A program.
    Command(Vec<String>),
}

/// One hook, ready to send.
pub struct Hook {
    /// `[[hook]] name`.
    pub name: String,
    /// Where.
    pub target: Target,
    /// How long one attempt may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hook({})", self.name)
    }
}

/// Every configured hook: secrets read now (a missing one is a configuration error).
pub fn resolve(config: &Config) -> Result<Vec<Arc<Hook>>> {
    config
        .hooks
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let target = match (&h.url, &h.command, &h.secret) {
                (Some(url), _, Some(secret)) => {
                    let what = format!("{} secret", h.label(i));
                    let revealed = secret.resolve(&what)?;
                    let key = crate::secret::whsec_key(revealed.expose()).ok_or_else(|| {
                        Error::Secret {
                            what: what.clone(),
                            message: "it is not a whsec_... key (\"whsec_\" and base64)".into(),
                        }
                    })?;
                    let client = crate::oauth2::http::client(h.ca_file.as_deref())?;
                    Target::Webhook {
                        url: url.clone(),
                        key,
                        client,
                    }
                }
                (_, Some(argv), _) => Target::Command(argv.clone()),
                _ => return Err(Error::Internal(format!("{}: no target", h.label(i)))),
            };
            Ok(Arc::new(Hook {
                name: h.name.clone(),
                target,
                timeout: h.timeout(),
            }))
        })
        .collect()
}

/// The routes of the configured hooks (which events each takes), for the store.
pub fn routes(config: &Config) -> Vec<crate::store::Route> {
    config
        .hooks
        .iter()
        .map(|h| crate::store::Route {
            name: h.name.clone(),
            events: h.events.clone(),
            mailboxes: h.mailboxes.clone(),
        })
        .collect()
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the store records.
    pub attempt: Attempt,
    /// HTTP status or exit code (0: none).
    pub status: i64,
    /// The answer, or what went wrong.
    pub text: String,
    /// The receiver said 410 Gone: disable the hook.
    pub disable: bool,
}

/// Seconds before attempt `attempts + 1`: doubling from 1 s up to an hour, with jitter
/// (between half and all of it), from `random` in `0..=u32::MAX`.
pub fn backoff(attempts: i64, random: u32) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 40) - 1).unwrap_or(0);
    let full = 1_i64
        .checked_shl(exp.min(20))
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    let half = full / 2;
    half + (i64::from(random) * (full - half + 1)) / (i64::from(u32::MAX) + 1)
}

/// A retry at `now + wait`, or `failed` once the event is older than [`RETRY_WINDOW`].
fn later(job: &DeliveryJob, now: i64, wait: i64) -> Attempt {
    if now.saturating_sub(job.created_at) >= RETRY_WINDOW {
        Attempt::Failed
    } else {
        Attempt::Later(now + wait.clamp(1, MAX_WAIT))
    }
}

/// The policy for a webhook's answer: 2xx delivered; 410 disables the hook (the delivery
/// waits for it); 429 and 503 wait as `Retry-After` says; anything else backs off.
pub fn judge_webhook(job: &DeliveryJob, a: &webhook::Answer, now: i64, random: u32) -> Verdict {
    let status = i64::from(a.status);
    let (attempt, disable) = match a.status {
        200..=299 => (Attempt::Delivered, false),
        410 => (Attempt::Later(now), true),
        429 | 503 if a.retry_after.is_some() => {
            let wait = i64::try_from(a.retry_after.unwrap_or(1)).unwrap_or(MAX_WAIT);
            (later(job, now, wait), false)
        }
        _ => (later(job, now, backoff(job.attempts, random)), false),
    };
    Verdict {
        attempt,
        status,
        text: a.text.clone(),
        disable,
    }
}

/// The policy for a command hook: exit 0 delivered, 75 later, anything else failed; a
/// command that could not run or ran out of time is tried again later.
pub fn judge_command(job: &DeliveryJob, ran: &Ran, now: i64, random: u32) -> Verdict {
    let (attempt, status, text) = match ran {
        Ran::Exited(0, out) => (Attempt::Delivered, 0, out.clone()),
        Ran::Exited(EXIT_RETRY, out) => (
            later(job, now, backoff(job.attempts, random)),
            i64::from(EXIT_RETRY),
            out.clone(),
        ),
        Ran::Exited(code, out) => (Attempt::Failed, i64::from(*code), out.clone()),
        Ran::Broken(why) => (
            later(job, now, backoff(job.attempts, random)),
            0,
            why.clone(),
        ),
    };
    Verdict {
        attempt,
        status,
        text,
        disable: false,
    }
}

/// Sends one event to `hook` now and judges the answer.
pub async fn attempt(hook: &Hook, job: &DeliveryJob) -> Verdict {
    let body =
        crate::store::event::wire(&job.uid, &job.kind, job.created_at, &job.data).to_string();
    let random = random_u32();
    match &hook.target {
        Target::Webhook { url, key, client } => {
            let a = webhook::post(client, url, key, &job.uid, &body, hook.timeout).await;
            judge_webhook(job, &a, crate::time::now(), random)
        }
        Target::Command(argv) => {
            let ran = command::run(argv, &body, hook.timeout).await;
            judge_command(job, &ran, crate::time::now(), random)
        }
    }
}

/// A random number for the jitter.
fn random_u32() -> u32 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b)
}

/// What a round of deliveries did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Delivered.
    pub delivered: u64,
    /// Put back for a later attempt.
    pub deferred: u64,
    /// Failed for good.
    pub failed: u64,
    /// Hooks disabled by a 410.
    pub disabled: Vec<String>,
    /// One line per problem.
    pub errors: Vec<String>,
}

impl Report {
    fn add(&mut self, other: Report) {
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.failed += other.failed;
        self.disabled.extend(other.disabled);
        self.errors.extend(other.errors);
    }
}

/// Sends everything due to every hook, each hook on its own, until nothing is due or
/// `deadline` passes (what is left stays pending).
pub async fn deliver(
    store: &StoreThread,
    hooks: &[Arc<Hook>],
    deadline: Option<Instant>,
) -> Report {
    let mut report = Report::default();
    if hooks.is_empty() {
        return report;
    }
    let now = crate::time::now();
    match store.call(move |s| s.hooks_release_stale(now)).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            deliveries = n,
            "interrupted hook deliveries: sending them again"
        ),
        Err(e) => report.errors.push(e.to_string()),
    }
    let each = hooks.iter().map(|h| deliver_hook(store, h, deadline));
    for r in futures_util::future::join_all(each).await {
        report.add(r);
    }
    report
}

/// [`deliver`] for one hook.
async fn deliver_hook(store: &StoreThread, hook: &Arc<Hook>, deadline: Option<Instant>) -> Report {
    let mut report = Report::default();
    let lease = i64::try_from(hook.timeout.as_secs()).unwrap_or(3600) + 60;
    // What was due when the pass began: a delivery deferred during the pass waits for the
    // next one. (Its retry is at least a second later, but in whole seconds that second can
    // be over a moment after the deferral.)
    let started = crate::time::now();
    while deadline.is_none_or(|d| Instant::now() < d) {
        let (name, now) = (hook.name.clone(), crate::time::now());
        let jobs = match store
            .call(move |s| s.hooks_claim(&name, now, started, lease, BATCH))
            .await
        {
            Ok(jobs) if jobs.is_empty() => break,
            Ok(jobs) => jobs,
            Err(e) => {
                report.errors.push(e.to_string());
                break;
            }
        };
        let verdicts = futures_util::future::join_all(jobs.iter().map(|j| attempt(hook, j))).await;
        let gone = verdicts.iter().find(|v| v.disable).map(|v| v.text.clone());
        let results = tally(hook, &jobs, verdicts, &mut report);
        if let Err(e) = store.call(move |s| s.hooks_record(&results)).await {
            report.errors.push(e.to_string());
            break;
        }
        if let Some(why) = gone {
            disable(store, hook, why, &mut report).await;
            break;
        }
    }
    report
}

/// Counts and logs the verdicts; returns what the store records.
fn tally(
    hook: &Hook,
    jobs: &[DeliveryJob],
    verdicts: Vec<Verdict>,
    report: &mut Report,
) -> Vec<(i64, Attempt, i64, String)> {
    jobs.iter()
        .zip(verdicts)
        .map(|(j, v)| {
            match v.attempt {
                Attempt::Delivered => {
                    report.delivered += 1;
                    tracing::debug!(hook = %hook.name, event = %j.uid, "delivered");
                }
                Attempt::Later(at) => {
                    report.deferred += 1;
                    tracing::warn!(hook = %hook.name, event = %j.uid, status = v.status,
                        answer = %v.text, retry_at = at, "delivery deferred");
                }
                Attempt::Failed => {
                    report.failed += 1;
                    tracing::error!(hook = %hook.name, event = %j.uid, status = v.status,
                        answer = %v.text, "delivery failed; `mailticket hooks --retry {}` sends it again", j.id);
                    report.errors.push(format!("hook {}: delivery {} failed: {}", hook.name, j.id, v.text));
                }
            }
            (j.id, v.attempt, v.status, v.text)
        })
        .collect()
}

async fn disable(store: &StoreThread, hook: &Hook, why: String, report: &mut Report) {
    let name = hook.name.clone();
    tracing::error!(hook = %name, answer = %why,
        "the receiver answered 410 Gone: hook disabled, nothing more is sent to it (see `mailticket hooks`)");
    let reason = format!("410 Gone: {why}");
    if let Err(e) = store.call(move |s| s.hook_disable(&name, &reason)).await {
        report.errors.push(e.to_string());
    }
    report.disabled.push(hook.name.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempts: i64, created_at: i64) -> DeliveryJob {
        DeliveryJob {
            id: 1,
            hook: "h".into(),
            attempts,
            uid: "evt_1".into(),
            kind: "ticket.created".into(),
            created_at,
            data: "{}".into(),
        }
    }

    fn answer(status: u16, retry_after: Option<u64>) -> webhook::Answer {
        webhook::Answer {
            status,
            retry_after,
            text: String::new(),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps_at_an_hour() {
        assert_eq!(backoff(1, 0), 0);
        assert_eq!(backoff(1, u32::MAX), 1);
        assert_eq!(backoff(4, 0), 4);
        assert_eq!(backoff(4, u32::MAX), 8);
        assert_eq!(backoff(30, u32::MAX), 3600);
        assert_eq!(backoff(30, 0), 1800);
    }

    #[test]
    fn answers_are_judged_as_the_standard_says() {
        let now = 1_000_000;
        let j = job(3, now - 10);
        assert_eq!(
            judge_webhook(&j, &answer(204, None), now, 0).attempt,
            Attempt::Delivered
        );
        let gone = judge_webhook(&j, &answer(410, None), now, 0);
        assert!(gone.disable);
        assert_eq!(
            judge_webhook(&j, &answer(429, Some(120)), now, 0).attempt,
            Attempt::Later(now + 120)
        );
        assert_eq!(
            judge_webhook(&j, &answer(500, None), now, u32::MAX).attempt,
            Attempt::Later(now + 4)
        );
        let old = job(40, now - RETRY_WINDOW);
        assert_eq!(
            judge_webhook(&old, &answer(500, None), now, 0).attempt,
            Attempt::Failed
        );
        assert_eq!(
            judge_command(&j, &Ran::Exited(0, String::new()), now, 0).attempt,
            Attempt::Delivered
        );
        assert!(matches!(
            judge_command(&j, &Ran::Exited(75, String::new()), now, 0).attempt,
            Attempt::Later(_)
        ));
        assert_eq!(
            judge_command(&j, &Ran::Exited(1, String::new()), now, 0).attempt,
            Attempt::Failed
        );
    }
}
