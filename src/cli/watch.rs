//! `mailticket watch`: runs until SIGINT or SIGTERM.
//!
//! The first signal cancels the watch's token: sessions finish the message in hand, log out,
//! and the command exits 0 (1 when the shutdown deadline passed). A second signal stops at
//! once: the runtime is abandoned and the command returns 130 without waiting; SQLite's
//! transactions keep the store whole either way.

use mailticket::lock::StoreLock;
use mailticket::store::StoreThread;
use tokio_util::sync::CancellationToken;

use super::Ctx;

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

pub fn run(ctx: &Ctx, a: &WatchArgs) -> anyhow::Result<u8> {
    let chosen = ctx.chosen_mailboxes(&a.mailboxes)?;
    let tokens = mailticket::oauth2::Tokens::new(&ctx.config, &ctx.db, &chosen, true)?;
    let mailboxes: Vec<_> = mailticket::sync::with_credentials(&chosen, &tokens)?
        .into_iter()
        .map(|(mb, creds)| (mb.clone(), creds))
        .collect();
    let outbound =
        super::smtp_with(ctx, &tokens)?.map(|smtp| (std::sync::Arc::new(smtp), ctx.ack.clone()));
    let hooks = mailticket::hooks::deliver::resolve(&ctx.config)?;
    let lock = StoreLock::acquire(&ctx.db, "watch")?;
    let store = ctx.open_store()?;
    let (handle, join) = StoreThread::spawn(store)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let end = rt.block_on(async {
        let stop = CancellationToken::new();
        let second = tokio::spawn(signals(stop.clone()));
        tokio::select! {
            r = mailticket::watch::run(&ctx.config, mailboxes, &handle, outbound, hooks, stop) => End::Finished(r),
            _ = second => End::Interrupted,
        }
    });
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

/// Cancels `stop` at the first SIGINT or SIGTERM; returns at the second.
async fn signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    for n in 0..2 {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        if n == 0 {
            tracing::info!(
                signal = name,
                "shutting down (send it again to stop at once)"
            );
            stop.cancel();
        }
    }
}
