//! `mailticket hooks`: event deliveries and their failures; `--send` sends what is due,
//! `--retry ID` forces one delivery, `--test NAME` sends a signed `test` event now,
//! `--enable NAME` takes a hook disabled by a 410 back into service.

use std::sync::Arc;

use mailticket::hooks::deliver::{self, Hook};
use mailticket::store::{DeliveryJob, StoreThread};
use serde_json::json;

use super::{Ctx, Usage, print_json};

/// How long `hooks --send` may spend.
const SEND_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct HooksArgs {
    /// Send every due delivery now
    #[arg(long)]
    pub send: bool,
    /// Put this delivery (failed or waiting) back in the queue, due now, and send it
    #[arg(long, value_name = "ID")]
    pub retry: Option<i64>,
    /// Send a signed `test` event to this hook now (nothing is recorded)
    #[arg(long, value_name = "NAME")]
    pub test: Option<String>,
    /// Enable a hook that a 410 Gone disabled
    #[arg(long, value_name = "NAME")]
    pub enable: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

impl HooksArgs {
    /// Only the listing: nothing sent, queued or enabled.
    pub fn reads_only(&self) -> bool {
        !self.send && self.retry.is_none() && self.test.is_none() && self.enable.is_none()
    }
}

pub fn run(ctx: &Ctx, a: &HooksArgs) -> anyhow::Result<u8> {
    if let Some(name) = &a.test {
        return test(ctx, name, a.json);
    }
    let mut store = if a.reads_only() {
        ctx.open_store_read()?
    } else {
        ctx.open_store()?
    };
    if let Some(name) = &a.enable {
        if !store.hook_enable(name)? {
            return Err(Usage(format!("hook {name:?} is not disabled")).into());
        }
        tracing::info!(hook = %name, "enabled");
    }
    if let Some(id) = a.retry {
        if !store.hooks_retry(id)? {
            return Err(Usage(format!(
                "delivery {id} is not waiting or failed (see `mailticket hooks`)"
            ))
            .into());
        }
        tracing::info!(delivery = id, "queued again");
    }
    if a.send || a.retry.is_some() {
        let hooks = deliver::resolve(&ctx.config)?;
        let (handle, join) = StoreThread::spawn(store)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = std::time::Instant::now() + SEND_BUDGET;
        let report = rt.block_on(deliver::deliver(&handle, &hooks, Some(deadline)));
        drop(handle);
        join.join()?;
        super::log_hooks(&report);
        if a.json {
            print_json(&report)?;
        } else {
            outln!(
                "delivered {}, deferred {}, failed {}",
                report.delivered,
                report.deferred,
                report.failed
            );
        }
        return Ok(u8::from(report.failed > 0 || !report.disabled.is_empty()));
    }
    list(&store, a.json)
}

fn list(store: &mailticket::store::Store, as_json: bool) -> anyhow::Result<u8> {
    let rows = store.hooks_list(500)?;
    let disabled = store.hooks_disabled()?;
    if as_json {
        let disabled: Vec<_> = disabled
            .iter()
            .map(|(name, since, reason)| {
                json!({"name": name, "since": mailticket::time::rfc3339(*since), "reason": reason})
            })
            .collect();
        print_json(&json!({"disabled": disabled, "deliveries": rows}))?;
        return Ok(0);
    }
    for (name, since, reason) in &disabled {
        outln!(
            "hook {name} DISABLED since {}: {reason} (`mailticket hooks --enable {name}`)",
            mailticket::time::local_full(*since)
        );
    }
    outln!(
        "{:>6}  {:<12} {:<22} {:>7} {:<9} {:>3} {:>4}  LAST",
        "ID",
        "HOOK",
        "TYPE",
        "TICKET",
        "STATUS",
        "TRY",
        "CODE"
    );
    for r in &rows {
        let last: String = r.last_response.chars().take(60).collect();
        outln!(
            "{:>6}  {:<12} {:<22} {:>7} {:<9} {:>3} {:>4}  {}",
            r.id,
            r.hook,
            r.kind,
            r.ticket_id,
            r.status,
            r.attempts,
            r.last_status,
            last.replace('\n', " ")
        );
    }
    Ok(0)
}

/// `hooks --test NAME`: one signed `test` event, sent now; exit 0 when it was delivered.
fn test(ctx: &Ctx, name: &str, as_json: bool) -> anyhow::Result<u8> {
    let hooks = deliver::resolve(&ctx.config)?;
    let Some(hook): Option<&Arc<Hook>> = hooks.iter().find(|h| h.name == name) else {
        return Err(Usage(format!("no [[hook]] named {name:?}")).into());
    };
    let now = mailticket::time::now();
    let job = DeliveryJob {
        id: 0,
        hook: name.to_owned(),
        attempts: 1,
        uid: format!("evt_test_{now}_{}", std::process::id()),
        kind: mailticket::event_type::TEST.to_owned(),
        created_at: now,
        data: json!({"hook": name, "message": "a test event from mailticket"}).to_string(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(deliver::attempt(hook, &job));
    let ok = v.attempt == mailticket::store::Attempt::Delivered;
    if as_json {
        print_json(
            &json!({"hook": name, "id": job.uid, "delivered": ok, "status": v.status, "answer": v.text}),
        )?;
    } else {
        outln!(
            "{name}: {} (status {}) {}",
            if ok { "delivered" } else { "NOT delivered" },
            v.status,
            v.text
        );
    }
    Ok(u8::from(!ok))
}
