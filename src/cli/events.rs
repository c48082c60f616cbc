//! `mailticket events`: the event log as lines in commit order, each with the cursor to
//! resume from (`--since`); `--follow` keeps printing new events until SIGINT or SIGTERM.

use std::time::Duration;

use mailticket::store::{EventRow, Store};

use super::Ctx;

/// How often `--follow` looks for new events.
const POLL: Duration = Duration::from_millis(250);
/// Events read per query.
const BATCH: i64 = 500;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Start after this cursor (the `cursor` of the last event seen)
    #[arg(long, value_name = "CURSOR", default_value_t = 0)]
    pub since: i64,
    /// Keep printing new events as they commit, until SIGINT/SIGTERM
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line: cursor, type, id, timestamp, data
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: &EventsArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let mut cursor = print_since(&store, a.since, a.json)?;
    if !a.follow {
        return Ok(0);
    }
    let stop = stop_flag()?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(POLL);
        cursor = print_since(&store, cursor, a.json)?;
    }
    Ok(0)
}

/// Prints every event after `since`; returns the last cursor printed (or `since`).
fn print_since(store: &Store, mut since: i64, json: bool) -> anyhow::Result<i64> {
    loop {
        let batch = store.events_since(since, BATCH)?;
        for e in &batch {
            print(e, json)?;
            since = e.id;
        }
        if (batch.len() as i64) < BATCH {
            return Ok(since);
        }
    }
}

fn print(e: &EventRow, json: bool) -> anyhow::Result<()> {
    let mut v = mailticket::store::event::wire(&e.uid, &e.kind, e.created_at, &e.data);
    if json {
        v["cursor"] = e.id.into();
        outln!("{}", serde_json::to_string(&v)?);
    } else {
        let ticket = if e.ticket_id == 0 {
            "-".to_owned()
        } else {
            format!("#{}", e.ticket_id)
        };
        outln!(
            "{:>8}  {}  {:<22} {:<8} {}",
            e.id,
            mailticket::time::local_full(e.created_at),
            e.kind,
            ticket,
            e.uid
        );
    }
    Ok(())
}

/// A flag raised by the first SIGINT or SIGTERM.
fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let raised = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                raised.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        })?;
    Ok(flag)
}
