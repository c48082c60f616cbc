//! `mailticket watch`: runs until SIGINT or SIGTERM; SIGHUP reloads the config.
//!
//! The first SIGINT/SIGTERM cancels the watch's token: sessions finish the message in hand,
//! log out, and the command exits 0 (1 when the shutdown deadline passed). A second signal
//! stops at once: the runtime is abandoned and the command returns 130 without waiting;
//! SQLite's transactions keep the store whole either way.
//!
//! SIGHUP reads the config again (and the secrets it names). When it loads, every mailbox
//! task winds down as on SIGTERM and the watch starts again with the new config, in the same
//! process, holding the same lock and store; when it does not, the error (naming the file and
//! the key) is logged and the watch goes on with the old config. The store itself (`[store]
//! path`, `--db`) is not changed by a reload. Should the old sessions not stop within
//! `shutdown-timeout`, the command exits 1 rather than run new sessions beside them.
//!
//! On a PostgreSQL store the lease thread ([`mailticket::lease::spawn`]) runs for the whole
//! command: the mailboxes are shared with the other workers, every commit is fenced with
//! the lease's token, a reload re-lists the mailboxes, and the leases are released at the end.
//!
//! Under systemd with `Type=notify`, the states go to `$NOTIFY_SOCKET` ([`super::notify`]).

use mailticket::config::MailboxConfig;
use mailticket::config::StoreConfig;
use mailticket::hooks::deliver::Hook;
use mailticket::lease::{Change, Connect, Fences, LeaseThread, Leases, Role, WorkerInfo};
use mailticket::oauth2::Credentials;
use mailticket::outbound::AckPlan;
use mailticket::outbound::senders::Senders;
use mailticket::store::Location;
use mailticket::store::StoreThread;
use mailticket::watch::Leased;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::notify::Notifier;
use super::{Args, Ctx};

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupted job).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only this mailbox (repeatable)
    #[arg(long = "mailbox", value_name = "NAME")]
    pub mailboxes: Vec<String>,
}

enum End {
    Finished(mailticket::Result<mailticket::watch::Stopped>),
    Interrupted,
}

/// Everything one generation of the watch runs with, read from one config.
struct Plan {
    ctx: Ctx,
    mailboxes: Vec<(MailboxConfig, Credentials)>,
    outbound: Option<(Arc<Senders>, Option<Arc<AckPlan>>)>,
    hooks: Vec<Arc<Hook>>,
}

impl Plan {
    /// Resolves the chosen mailboxes' credentials, SMTP and hooks from `ctx`'s config: any
    /// configuration error shows here.
    fn new(ctx: Ctx, a: &WatchArgs) -> anyhow::Result<Plan> {
        let chosen = ctx.chosen_mailboxes(&a.mailboxes)?;
        let tokens = mailticket::oauth2::Tokens::new(&ctx.config, &ctx.store, &chosen, true)?;
        let mailboxes = mailticket::sync::with_credentials(&chosen, &tokens)?
            .into_iter()
            .map(|(mb, creds)| (mb.clone(), creds))
            .collect();
        let outbound =
            super::smtp_with(&ctx, &tokens)?.map(|smtp| (Arc::new(smtp), ctx.ack.clone()));
        let hooks = mailticket::hooks::deliver::resolve(&ctx.config)?;
        Ok(Plan {
            ctx,
            mailboxes,
            outbound,
            hooks,
        })
    }

    /// The names of the mailboxes to watch.
    fn names(&self) -> Vec<String> {
        self.mailboxes
            .iter()
            .map(|(mb, _)| mb.name.clone())
            .collect()
    }
}

pub fn run(args: &Args, ctx: Ctx, a: &WatchArgs) -> anyhow::Result<u8> {
    let db = ctx.db.clone();
    let lock = ctx.lock("watch")?;
    let mut store = ctx.open_store()?;
    let plan = Plan::new(ctx, a)?;
    let mut leasing = match &plan.ctx.store {
        Location::Postgres(cfg) => Some(Leasing::start(cfg, &plan)?),
        Location::File(_) => None,
    };
    // Every commit for a mailbox checks, in its transaction, that its lease is still ours.
    if let Some(l) = &leasing {
        store.set_fence(Arc::new(l.fences.clone()));
    }
    let (handle, join) = StoreThread::spawn(store)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let notifier = Notifier::from_env();
    let reload = |_: ()| reload(args, a, &db);
    let end = rt.block_on(supervise(
        plan,
        &handle,
        &notifier,
        reload,
        leasing.as_mut(),
    ));
    notifier.send("STOPPING=1");
    // The sessions have stopped: the leases go, for others to take. After a second signal
    // nothing waits for that (the thread releases them if it gets to it before the exit;
    // else they expire).
    if let (Some(l), End::Finished(_)) = (leasing, &end) {
        l.thread.stop();
    }
    match end {
        End::Interrupted => {
            tracing::warn!("second signal: stopping at once");
            rt.shutdown_background();
            // The store thread is left to the process exit; nothing is committed half.
            std::mem::forget(join);
            drop(lock);
            Ok(EXIT_INTERRUPTED)
        }
        End::Finished(r) => {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            drop(handle);
            let mut store = join.join()?;
            store.finish()?;
            drop(lock);
            Ok(if r?.clean { 0 } else { 1 })
        }
    }
}

/// A worker's leases on a PostgreSQL store: the lease thread, the fences it keeps, and the
/// changes it reports (one mailbox session runs per lease held).
struct Leasing {
    thread: LeaseThread,
    fences: Fences,
    changes: mpsc::UnboundedReceiver<Change>,
}

impl Leasing {
    /// Starts the lease thread on a connection of its own for the plan's mailboxes.
    fn start(cfg: &Arc<StoreConfig>, plan: &Plan) -> anyhow::Result<Leasing> {
        let leases = Leases::new(
            mailticket::store::pg::connect(cfg)?,
            WorkerInfo::this_process(Role::Watch),
            Duration::from_secs(cfg.lease),
            plan.names(),
        );
        tracing::info!(
            worker = %leases.worker().id,
            lease_s = cfg.lease,
            "sharing the mailboxes with the other workers of this store"
        );
        let fences = leases.fences();
        let cfg = cfg.clone();
        let connect: Connect = Box::new(move || mailticket::store::pg::connect(&cfg));
        let (thread, changes) = mailticket::lease::spawn(leases, connect)?;
        Ok(Leasing {
            thread,
            fences,
            changes,
        })
    }
}

/// The config as SIGHUP finds it: the file loaded again, its secrets read again. The store
/// stays the one the watch opened.
fn reload(args: &Args, a: &WatchArgs, db: &std::path::Path) -> anyhow::Result<Plan> {
    let ctx = Ctx::load(args)?;
    if ctx.db != db {
        tracing::warn!(
            running = %db.display(),
            configured = %ctx.db.display(),
            "the store path changed; it takes a restart, the reload keeps the open store"
        );
    }
    let ctx = Ctx {
        db: db.to_path_buf(),
        ..ctx
    };
    let path = ctx.config_path.clone();
    let plan = Plan::new(ctx, a)?;
    tracing::info!(path = %path.display(), "config reloaded");
    Ok(plan)
}

/// Runs the watch, one generation per config: a SIGHUP whose config loads ends the current
/// generation and starts the next; one whose config does not leaves it running.
async fn supervise(
    mut plan: Plan,
    store: &StoreThread,
    notifier: &Notifier,
    reload: impl Fn(()) -> anyhow::Result<Plan>,
    leasing: Option<&mut Leasing>,
) -> End {
    let (lease_thread, fences, mut changes) = match leasing {
        Some(l) => (Some(&l.thread), Some(&l.fences), Some(&mut l.changes)),
        None => (None, None, None),
    };
    let stop = CancellationToken::new();
    let (hup_tx, mut hup) = mpsc::channel(1);
    let mut second = tokio::spawn(signals(stop.clone(), hup_tx));
    let _watchdog = notifier.spawn_watchdog();
    notifier.send("READY=1");
    loop {
        let generation = stop.child_token();
        let Plan {
            ctx,
            mailboxes,
            outbound,
            hooks,
        } = plan;
        let watching = mailticket::watch::run(
            &ctx.config,
            mailboxes,
            store,
            outbound,
            hooks,
            generation.clone(),
            fences.zip(changes.as_deref_mut()).map(|(f, c)| Leased {
                fences: f.clone(),
                changes: c,
            }),
        );
        tokio::pin!(watching);
        let next = loop {
            tokio::select! {
                r = &mut watching => return End::Finished(r),
                _ = &mut second => return End::Interrupted,
                Some(()) = hup.recv() => {
                    notifier.send("RELOADING=1");
                    // Reading the config may run secret commands: off the async workers.
                    match tokio::task::block_in_place(|| reload(())) {
                        Ok(next) => break next,
                        Err(e) => {
                            tracing::error!(
                                error = mailticket::error::chain_text(e.as_ref()),
                                "reload failed; watching on with the config loaded before"
                            );
                            notifier.send("READY=1");
                        }
                    }
                }
            }
        };
        generation.cancel();
        let r = tokio::select! {
            r = &mut watching => r,
            _ = &mut second => return End::Interrupted,
        };
        match r {
            Ok(s) if s.clean && !stop.is_cancelled() => {}
            // Sessions still winding down would run beside the new ones: stop instead (exit
            // 1; systemd's Restart=on-failure starts it again, with the new config).
            Ok(s) if !s.clean => {
                tracing::error!("the old sessions did not stop within shutdown-timeout; exiting");
                return End::Finished(Ok(s));
            }
            r => return End::Finished(r),
        }
        if let Some(t) = lease_thread {
            t.configure(next.names());
        }
        notifier.send("READY=1");
        plan = next;
    }
}

/// Cancels `stop` at the first SIGINT or SIGTERM and returns at the second; passes each
/// SIGHUP on to `hup`.
async fn signals(stop: CancellationToken, hup: mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let mut n = 0;
    while n < 2 {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hangup.recv() => {
                tracing::info!(signal = "SIGHUP", "reloading the config");
                // One pending reload is enough: a second SIGHUP meanwhile reads the same file.
                let _ = hup.try_send(());
                continue;
            }
        };
        if n == 0 {
            tracing::info!(
                signal = name,
                "shutting down (send it again to stop at once)"
            );
            stop.cancel();
        }
        n += 1;
    }
}
