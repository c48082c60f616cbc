//! `bench workers [MAILBOXES WORKERS]` (default 1000 4): scale-out on one machine. A Dovecot
//! with MAILBOXES users, a PostgreSQL store, and WORKERS `mailticket watch` processes sharing
//! the mailboxes through leases. Prints the time until every mailbox is connected, each
//! worker's share, resident memory and idle CPU, and, after `kill -9` of one worker, how long
//! until its mailboxes are connected again by the others.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Postgres, cpu_ticks, mailticket_bin, proc_field, sh};

/// A log event of worker `.0` about mailbox `.2`: its session connected (`.1` true), or its
/// lease was acquired.
type Connected = (usize, bool, String, Instant);

fn spawn_worker(
    bin: &PathBuf,
    config: &PathBuf,
    work: &PathBuf,
    i: usize,
    tx: mpsc::Sender<Connected>,
) -> Child {
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json", "watch"])
        .current_dir(work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &v["fields"];
            let event = if fields["message"] == "connected" {
                Some((true, v["span"]["mailbox"].as_str()))
            } else if fields["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("acquired the lease"))
            {
                Some((false, fields["mailbox"].as_str()))
            } else {
                None
            };
            if let Some((connected, mailbox)) = event {
                let mailbox = mailbox.unwrap_or("").to_owned();
                if tx.send((i, connected, mailbox, Instant::now())).is_err() {
                    break;
                }
            } else if v["level"] == "ERROR" {
                eprintln!("worker {i}: {line}");
            }
        }
    });
    child
}

pub fn run(mailboxes: usize, workers: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = mailticket_bin();
    let dir = PathBuf::from(format!("/tmp/mt-benchs-{}", std::process::id()));
    let users: Vec<String> = (0..mailboxes)
        .map(|i| format!("u{i:04}:pw{i:04}"))
        .collect();
    let users = users.join(" ");
    let limit = (mailboxes + 100).to_string();
    super::imap_server_with(
        &root,
        &dir,
        &["start"],
        &[
            ("IMAP_USERS", users.as_ref()),
            ("IMAP_PROCESS_LIMIT", limit.as_ref()),
        ],
    );
    let stop = super::scopeguard(&root, &dir);
    let pg = Postgres::start(&root, &dir.join("pg"));

    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let config_path = work.join("mailticket.toml");
    let mut config = pg.store_toml();
    config += &super::mailboxes_toml(&users, &dir);
    std::fs::write(&config_path, config).expect("write config");
    // Migrate once before the workers start, so the timing below is theirs alone.
    sh(Command::new(&bin)
        .arg("--config")
        .arg(&config_path)
        .args(["tickets", "--json"]));

    let (tx, rx) = mpsc::channel::<Connected>();
    let t0 = Instant::now();
    let mut children: Vec<Child> = (0..workers)
        .map(|i| spawn_worker(&bin, &config_path, &work, i, tx.clone()))
        .collect();
    let mut held = vec![0usize; workers];
    let mut seen = std::collections::HashSet::new();
    while seen.len() < mailboxes {
        let (w, connected, mailbox, _) = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("every mailbox connects");
        if connected && seen.insert(mailbox) {
            held[w] += 1;
        }
    }
    println!(
        "{mailboxes} mailboxes over {workers} workers connected in {:.2} s; shares {held:?}",
        t0.elapsed().as_secs_f64()
    );

    std::thread::sleep(Duration::from_secs(5));
    let idle = 30;
    let before: Vec<u64> = children.iter().map(|c| cpu_ticks(c.id())).collect();
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle));
    let wall = w0.elapsed().as_secs_f64();
    for (i, c) in children.iter().enumerate() {
        let rss = proc_field(c.id(), "status", "VmRSS:").unwrap_or(0);
        let cpu = (cpu_ticks(c.id()) - before[i]) as f64 / 100.0;
        println!(
            "worker {i}: {} mailboxes, RSS {:.1} MB, idle CPU {cpu:.2} s over {wall:.0} s ({:.2} %)",
            held[i],
            rss as f64 / 1024.0,
            100.0 * cpu / wall
        );
    }

    // kill -9 one worker; its mailboxes are taken over when their leases run out.
    let victim = 0;
    while rx.try_recv().is_ok() {}
    let killed = Instant::now();
    children[victim].kill().expect("kill -9");
    let _ = children[victim].wait();
    let (mut claimed, mut back) = (
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    let (mut last_claim, mut last) = (killed, killed);
    while back.len() < held[victim] {
        let (_, connected, mailbox, at) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the dead worker's mailboxes are taken over");
        if !connected && claimed.insert(mailbox.clone()) {
            last_claim = at;
        }
        if connected && back.insert(mailbox) {
            last = at;
        }
    }
    println!(
        "kill -9 of a worker holding {}: all its leases taken over {:.2} s later, all its \
         sessions connected again {:.2} s later (lease 10 s)",
        held[victim],
        last_claim.duration_since(killed).as_secs_f64(),
        last.duration_since(killed).as_secs_f64()
    );
    for c in children.iter_mut().skip(1) {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in children.iter_mut().skip(1) {
        let _ = c.wait();
    }
    drop(pg);
    drop(stop);
}
