//! `mailticket sync`: one pass over the mailboxes.

use std::sync::Arc;
use std::time::Duration;

use mailticket::config::{MailboxConfig, StoreConfig};
use mailticket::lease::{Connect, PassLeases};
use mailticket::oauth2::Credentials;
use mailticket::store::Location;
use mailticket::summary::Skipped;

use mailticket::pipeline::Rules;
use mailticket::store::StoreThread;
use mailticket::sync::{SyncOptions, run as sync_run};

use super::{Ctx, print_json, print_summary};

/// How long `sync` spends on hook deliveries at its end; what is left stays pending for the
/// next run (or `hooks --send`).
const HOOKS_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Only this mailbox (repeatable)
    #[arg(long = "mailbox", value_name = "NAME")]
    pub mailboxes: Vec<String>,
    /// Fetch and judge, but store nothing and leave the server untouched
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
}

/// Takes the leases of `mailboxes` for this pass, renewed until the pass finishes.
fn claim_pass(
    cfg: &Arc<StoreConfig>,
    mailboxes: &[(&MailboxConfig, Credentials)],
) -> anyhow::Result<PassLeases> {
    let names: Vec<String> = mailboxes.iter().map(|(mb, _)| mb.name.clone()).collect();
    let lease = Duration::from_secs(cfg.lease);
    let cfg = cfg.clone();
    let connect: Connect = Box::new(move || mailticket::store::pg::connect(&cfg));
    Ok(mailticket::lease::claim_pass(connect, lease, &names)?)
}

/// The mailboxes the pass left to the watch workers holding them.
fn skipped(pass: &PassLeases) -> Vec<Skipped> {
    pass.busy
        .iter()
        .map(|(name, owner, expires_in)| Skipped {
            name: name.clone(),
            held_by: owner.clone(),
            lease_expires_in_s: expires_in.as_secs_f64(),
        })
        .collect()
}

pub fn run(ctx: &Ctx, a: &SyncArgs) -> anyhow::Result<u8> {
    let mailboxes = ctx.chosen_mailboxes(&a.mailboxes)?;
    mailticket::tls::read_roots_ahead();
    let tokens = mailticket::oauth2::Tokens::new(&ctx.config, &ctx.store, &mailboxes, true)?;
    let mailboxes = mailticket::sync::with_credentials(&mailboxes, &tokens)?;
    let smtp = super::smtp_with(ctx, &tokens)?;
    let hooks = mailticket::hooks::deliver::resolve(&ctx.config)?;
    let ack = ctx.ack.clone();
    // A dry run changes nothing, so it may run beside anything.
    let _lock = if a.dry_run { None } else { ctx.lock("sync")? };
    let mut store = if a.dry_run {
        ctx.open_dry_run()?
    } else {
        ctx.open_store()?
    };
    // On a shared store the pass takes each mailbox's lease; one a watch worker holds is
    // left to it.
    let pass = match (&ctx.store, a.dry_run) {
        (Location::Postgres(cfg), false) => Some(claim_pass(cfg, &mailboxes)?),
        _ => None,
    };
    if let Some(p) = &pass {
        store.set_fence(Arc::new(p.fences.clone()));
    }
    let mailboxes: Vec<_> = mailboxes
        .into_iter()
        .filter(|(mb, _)| pass.as_ref().is_none_or(|p| p.holds(&mb.name)))
        .collect();
    let (handle, join) = StoreThread::spawn(store)?;
    // One thread: the pass runs inside `block_on`, one mailbox after another, and its CPU
    // work is on the parse workers and the store thread. With a multi-threaded runtime a
    // worker thread would drive the sockets and wake this one for every read (about 50,000
    // context switches in the benchmark sync, against 10,000 now, and 5 % of its CPU).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let progress = Arc::new(mailticket::progress::Progress::default());
    let opts = SyncOptions {
        dry_run: a.dry_run,
        ack,
        rules: Arc::new(Rules::from_config(&ctx.config)),
        log_each: false,
        progress: Some(progress.clone()),
    };
    let line = super::progress::ProgressLine::start("sync", &progress, ctx.quiet);
    let mut summary = rt.block_on(sync_run(&ctx.config, &mailboxes, &handle, opts));
    drop(line);
    summary.dry_run = a.dry_run;
    if let Some(pass) = pass {
        summary.skipped = skipped(&pass);
        pass.finish();
    }
    if let (Some(smtp), false) = (&smtp, a.dry_run) {
        summary.push_drain(rt.block_on(mailticket::outbound::drain(&handle, smtp)));
    }
    if !a.dry_run {
        let deadline = std::time::Instant::now() + HOOKS_BUDGET;
        let r = rt.block_on(mailticket::hooks::deliver::deliver(
            &handle,
            &hooks,
            Some(deadline),
        ));
        super::log_hooks(&r);
    }
    drop(handle);
    let mut store = join.join()?;
    store.finish()?;
    summary.log(if a.dry_run {
        "dry run (nothing kept)"
    } else {
        "sync"
    });
    mailticket::stages::log();
    if a.json {
        print_json(&summary)?;
    } else if !ctx.quiet || summary.failed() {
        print_summary(&summary)?;
    }
    Ok(if summary.failed() { 1 } else { 0 })
}
