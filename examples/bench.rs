#![allow(clippy::expect_used, clippy::unwrap_used)]

//! Sync throughput against a real Dovecot on 127.0.0.1, in one run:
//!
//! 1. starts a throw-away Dovecot (tests/env/imap-server) and seeds 10,000 × 3 KB and
//!    1,000 × 200 KB messages (tests/env/mailgen.py);
//! 2. the floor: a raw `UID FETCH BODY.PEEK[]` of every message over TLS, in the same batches
//!    as a sync, without parsing or storing; and the floor, Python's imaplib doing
//!    the same in batches of 500 (examples/bench/imaplib_fetch.py);
//! 3. `mailticket sync` of the same mailbox into a fresh store (the built binary, so its peak
//!    RSS is its own), with every message unseen again before each run.
//!
//! Steps 2 and 3 alternate, round by round, so that a machine whose speed drifts moves them
//! alike. Prints messages/s, MB/s, the ratio sync/floor (of the medians, and each round's
//! own) and the peak RSS (median of the runs).
//!
//! Run with `scripts/bench` (it builds in release mode first), or:
//! `cargo build --release --bins --examples && target/release/examples/bench [SMALL LARGE RUNS]`
//!
//! `bench pg [SMALL LARGE RUNS]` runs the same sync into a PostgreSQL store instead (a
//! throw-away cluster from tests/env/pg-server on 127.0.0.1, TLS verified, its schema dropped
//! before each run), and prints the machine's CPU too: the database server's work is not in
//! the client's figures.
//!
//! `bench big [SMALL LARGE RUNS MB SHAPE]` (default 10000 1000 1 50 zip) is the same sync with
//! one more message of MB megabytes last in the mailbox: its peak RSS shows whether a huge
//! message is held whole (`max-message-size` is raised to let it in). SHAPE is its attachment:
//! `zip` (base64), `log` (an ASCII log attached as it is, 7bit), `csv-qp` (a UTF-8 CSV file
//! in quoted-printable, as Outlook sends text files), `latin1` (a Latin-1 log sent 8bit
//! without a charset) or `text` (that log as the message's own text); `fwd-SHAPE` is that
//! message forwarded, attached as `message/rfc822` to a short one.
//!
//! `bench workers [MAILBOXES WORKERS]` (default 1000 4): many `watch` workers sharing the
//! mailboxes of a PostgreSQL store through leases (see `bench/workers.rs`).
//!
//! `bench watch [MESSAGES MAILBOXES]` (default 50 100) measures `mailticket watch` instead: the
//! new-mail → ticket latency of MESSAGES messages appended one by one (p50, p99, max; from the
//! start of the append, which itself takes ~30 ms of `doveadm save`), then the resident memory
//! and CPU use of the one process idling on MAILBOXES mailboxes (one Dovecot user each), and
//! how long a SIGTERM takes.
//!
//! `bench acks [N]` (default 300) measures the outbound side: N acknowledgements queued by
//! `mailticket import --ack` (while the SMTP server is down, so they wait in the outbox), then
//! the wall time of the `mailticket outbox --send` that drains them to the loopback SMTP sink
//! (tests/env/smtp-sink: STARTTLS + AUTH, like port 587), and how many connections it used.
//!
//! `bench parse [SMALL OUTLOOK RUNS]` (default 3000 2000 5) times the parse alone, in process:
//! the benchmark's small messages and messages shaped as Outlook sends them (plain and HTML
//! parts in quoted-printable), per message and in MB/s (see `bench/parse.rs`).
//!
//! `bench stages [SMALL LARGE RUNS]` (default 10000 1000 3) times the two CPU-heavy stages
//! in process, each on one thread, over the sync benchmark's own messages: `prepare` (parse,
//! classify, compress) of the small and the large ones, and the store's commits; CPU per
//! message, steadier than a whole sync's (see `bench/stages.rs`).
//!
//! `bench login [RUNS]` (default 20) measures what OAuth2 costs a cron `sync`: the wall time of
//! `mailticket sync` of an empty mailbox with a password (LOGIN), with XOAUTH2 and the access
//! token cached in the store, and with XOAUTH2 and a new client-credentials grant every run
//! (the token row deleted first), against the local token endpoint (tests/env/oauth2-server).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailticket::config::Config;

#[path = "bench/parse.rs"]
mod parse;
#[path = "bench/stages.rs"]
mod stages;
#[path = "bench/workers.rs"]
mod workers;

const IMAP_PORT: u16 = 24143;
const IMAPS_PORT: u16 = 24993;

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run a command");
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn imap_server(root: &Path, dir: &Path, args: &[&str]) -> String {
    imap_server_with(root, dir, args, &[])
}

/// `tests/env/imap-server` with `args`, on the benchmark's ports, with more environment.
fn imap_server_with(
    root: &Path,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> String {
    sh(Command::new("bash")
        .arg(root.join("tests/env/imap-server"))
        .arg("-d")
        .arg(dir)
        .args(args)
        .env("IMAP_PORT", IMAP_PORT.to_string())
        .env("IMAPS_PORT", IMAPS_PORT.to_string())
        .envs(env.iter().copied()))
}

/// Busy CPU seconds of the whole machine so far (all processes: Dovecot too), from /proc/stat.
fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first().unwrap_or(&0.0)
        + f.get(1).unwrap_or(&0.0)
        + f.get(2).unwrap_or(&0.0)
        + f.get(5).unwrap_or(&0.0)
        + f.get(6).unwrap_or(&0.0);
    busy / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What one `mailticket sync` cost, from its own rusage (GNU time's wait4) and its stage
/// counters (the `stage seconds` debug line, see `mailticket::stages`).
#[derive(Default, Clone)]
struct Cost {
    wall: f64,
    user: f64,
    sys: f64,
    peak_kb: f64,
    stages: Vec<(String, f64)>,
}

impl Cost {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// Runs `bin ARGS` under `/usr/bin/time`, with the stage counters logged as JSON.
fn run_measured(bin: &Path, args: &[&std::ffi::OsStr], scratch: &Path) -> Cost {
    let times = scratch.join("time.out");
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&times)
        .arg(bin)
        .args(args)
        .args(["--log-format", "json", "-q"])
        .env("MAILTICKET_LOG", "warn,mailticket::stages=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let mut cost = Cost::default();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let fields = &v["fields"];
        if fields["message"] == "stage cpu seconds" {
            for (k, x) in fields.as_object().into_iter().flatten() {
                if let Some(x) = x.as_f64() {
                    cost.stages.push((k.clone(), x));
                }
            }
        } else {
            eprintln!("sync: {line}");
        }
    }
    assert!(out.status.success(), "sync failed: {}", out.status);
    let t: Vec<f64> = std::fs::read_to_string(&times)
        .expect("time's output")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if let [wall, user, sys, kb] = t[..] {
        (cost.wall, cost.user, cost.sys, cost.peak_kb) = (wall, user, sys, kb);
    }
    cost
}

/// The run whose CPU time is the median.
fn median_cost(mut v: Vec<Cost>) -> Cost {
    v.sort_by(|a, b| a.cpu().total_cmp(&b.cpu()));
    v[v.len() / 2].clone()
}

/// Prints one sync's cost: wall (under whatever load the machine has), CPU, CPU per 1,000
/// messages, peak RSS, and the stage split.
fn print_cost(label: &str, c: &Cost, count: usize, all: &[Cost]) {
    println!(
        "{label}: CPU {:.2} s (user {:.2} + sys {:.2}) = {:.3} s per 1,000 messages; \
         peak RSS {:.1} MB; wall {:.2} s (measured under load)",
        c.cpu(),
        c.user,
        c.sys,
        c.cpu() * 1000.0 / count.max(1) as f64,
        c.peak_kb / 1024.0,
        c.wall
    );
    println!(
        "  all runs: CPU {:.2?} s, peak RSS {:.0?} MB",
        all.iter().map(Cost::cpu).collect::<Vec<_>>(),
        all.iter().map(|c| c.peak_kb / 1024.0).collect::<Vec<_>>()
    );
    let mut line = "  CPU s per stage:".to_owned();
    for k in [
        "fetch_tls",
        "parse",
        "hash",
        "classify",
        "compress",
        "thread",
        "sqlite",
        "checkpoint",
    ] {
        let x = c.stages.iter().find(|s| s.0 == k).map_or(0.0, |s| s.1);
        line += &format!(" {k} {x:.2}");
    }
    let stat = |k: &str| c.stages.iter().find(|s| s.0 == k).map_or(0.0, |s| s.1);
    let (groups, grouped) = (stat("groups"), stat("grouped"));
    if groups > 0.0 {
        line += &format!(
            "; {groups} commits of {:.1} messages on average",
            grouped / groups
        );
    }
    println!("{line}");
}

/// The floor: Python's imaplib downloading the mailbox in batches
/// (examples/bench/imaplib_fetch.py): messages, bytes, wall (from its connect to its logout,
/// as the script measures it), client CPU seconds, and the wall of the whole process.
fn imaplib_fetch(root: &Path, dir: &Path) -> (usize, u64, f64, f64, f64) {
    // The interpreter itself, not a wrapper in front of it (pyenv's shims are shell scripts):
    // what the machine spends beside the fetch is then Dovecot's.
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let python = PYTHON.get_or_init(|| {
        sh(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
            .trim()
            .to_owned()
    });
    let t0 = Instant::now();
    let out = sh(Command::new(python)
        .arg(root.join("examples/bench/imaplib_fetch.py"))
        .args(["localhost", &IMAPS_PORT.to_string()])
        .arg(dir.join("tls/ca.crt"))
        .args(["support", "support-pass"]));
    let process = t0.elapsed().as_secs_f64();
    let f: Vec<&str> = out.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .expect("imaplib_fetch.py")
    };
    (num(0) as usize, num(1) as u64, num(2), num(3), process)
}

async fn raw_fetch(config: &Config) -> (usize, u64, Duration) {
    let mb = &config.mailboxes[0];
    let t0 = Instant::now();
    let mut imap = mailticket::imap::connect(
        mb,
        &mailticket::oauth2::Credentials::Password(
            mailticket::oauth2::mailbox_password(mb).expect("password"),
        ),
    )
    .await
    .expect("connect");
    let sel = imap.select(&mb.folder).await.expect("select");
    let sizes = imap
        .sizes("1:*", u64::from(sel.exists))
        .await
        .expect("sizes");
    let mut count = 0usize;
    let mut bytes = 0u64;
    for batch in sizes.chunks(500) {
        imap.fetch_each(batch, |m| {
            count += 1;
            bytes += m.bytes.len() as u64;
            async { Ok(()) }
        })
        .await
        .expect("fetch");
    }
    let dt = t0.elapsed();
    imap.logout().await;
    (count, bytes, dt)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("watch") {
        let messages = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
        let mailboxes = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
        return watch_bench(messages, mailboxes);
    }
    if args.first().map(String::as_str) == Some("acks") {
        let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
        return acks_bench(n);
    }
    if args.first().map(String::as_str) == Some("workers") {
        let mailboxes = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let workers = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
        return workers::run(mailboxes, workers);
    }
    if args.first().map(String::as_str) == Some("parse") {
        let small = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3000);
        let outlook = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
        let runs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
        return parse::run(small, outlook, runs);
    }
    if args.first().map(String::as_str) == Some("stages") {
        let small = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
        let large = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000);
        let runs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
        return stages::run(small, large, runs);
    }
    if args.first().map(String::as_str) == Some("login") {
        let runs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
        return login_bench(runs);
    }
    let pg = args.first().map(String::as_str) == Some("pg");
    let big = args.first().map(String::as_str) == Some("big");
    let args = &args[usize::from(pg || big)..];
    let small: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let large: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let default_runs = if big { 1 } else { 3 };
    let runs: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_runs)
        .max(1);
    let huge_mb: u64 = if big {
        args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50)
    } else {
        0
    };
    // What the huge message's attachment is (tests/env/mailgen.py --huge-shape).
    let shape = args.get(4).map_or("zip", String::as_str);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = mailticket_bin();

    let dir = PathBuf::from(format!("/tmp/mt-bench-{}", std::process::id()));
    imap_server(&root, &dir, &["start"]);
    let stop = scopeguard(&root, &dir);
    imap_server(
        &root,
        &dir,
        &[
            "seed",
            "--small",
            &small.to_string(),
            "--large",
            &large.to_string(),
            "--huge",
            &(huge_mb * 1_000_000).to_string(),
            "--huge-shape",
            shape,
        ],
    );

    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let postgres = pg.then(|| Postgres::start(&root, &dir.join("pg")));
    let store = postgres.as_ref().map_or_else(
        || "[store]\npath = \"bench.db\"\n".to_owned(),
        Postgres::store_toml,
    );
    let config_path = work.join("mailticket.toml");
    std::fs::write(
        &config_path,
        format!(
            "{store}[[mailbox]]\nname = \"support\"\nhost = \"localhost\"\n\
             port = {IMAPS_PORT}\nca-file = \"{}\"\nusername = \"support\"\npassword = \"support-pass\"\n\
             max-message-size = {}\n",
            dir.join("tls/ca.crt").display(),
            (huge_mb * 2_000_000).max(50_000_000)
        ),
    )
    .expect("write config");
    let config = Config::load(&config_path).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");

    let mut floor = Vec::new();
    let mut floor_cpu = Vec::new();
    let (mut imaplib_wall, mut imaplib_cpu, mut imaplib_busy) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut imaplib_process = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    let mut costs = Vec::new();
    let mut machine = Vec::new();
    let mut unseen_busy = Vec::new();
    // One round is a raw fetch, an imaplib fetch and a sync, one after the other: a machine
    // that speeds up or slows down over the minutes of a benchmark (a shared VM does) moves
    // all three alike, and each round gives a ratio of its own. Every other round the sync
    // goes first, so that neither client is always the one measured after seconds of load
    // on both cores (this VM's steal time grows with it).
    let mut sync_first = Vec::new();
    for round in 0..runs {
        let first = round % 2 == 1;
        sync_first.push(first);
        let mut measure_sync = || {
            let b0 = busy_seconds();
            imap_server(
                &root,
                &dir,
                &[
                    "doveadm", "flags", "remove", "-u", "support", "\\Seen", "mailbox", "INBOX",
                    "all",
                ],
            );
            unseen_busy.push(busy_seconds() - b0);
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(work.join(format!("bench.db{ext}")));
            }
            if let Some(pg) = &postgres {
                pg.empty();
            }
            let b0 = busy_seconds();
            costs.push(run_measured(
                &bin,
                &[
                    "--config".as_ref(),
                    config_path.as_os_str(),
                    "sync".as_ref(),
                ],
                &work,
            ));
            machine.push(busy_seconds() - b0);
        };
        if first {
            measure_sync();
        }
        let b0 = busy_seconds();
        let (c, b, dt) = rt.block_on(raw_fetch(&config));
        floor_cpu.push(busy_seconds() - b0);
        (count, bytes) = (c, b);
        floor.push(dt.as_secs_f64());
        let b0 = busy_seconds();
        let (n, size, wall, cpu, process) = imaplib_fetch(&root, &dir);
        imaplib_busy.push(busy_seconds() - b0);
        assert_eq!((n, size), (c, b), "imaplib fetched another mailbox");
        imaplib_wall.push(wall);
        imaplib_process.push(process);
        imaplib_cpu.push(cpu);
        if !first {
            measure_sync();
        }
    }
    let db_size = match &postgres {
        Some(pg) => pg.size(),
        None => std::fs::metadata(work.join("bench.db")).map_or(0, |m| m.len()),
    };
    let sync = median_cost(costs.clone());
    let (f, s) = (median(floor.clone()), sync.wall);
    let mb = bytes as f64 / 1e6;
    println!(
        "messages: {count}, {mb:.1} MB as served; {runs} run(s), medians (all runs in brackets)"
    );
    if big {
        println!(
            "of which one huge message of {huge_mb} MB (last in the mailbox), its attachment: {shape}"
        );
    }
    println!(
        "raw UID FETCH over TLS: {:>8.0} msg/s {:>7.1} MB/s  {f:.2} s  {floor:.2?}  (wall, under load)",
        count as f64 / f,
        mb / f
    );
    println!(
        "mailticket sync:        {:>8.0} msg/s {:>7.1} MB/s  {s:.2} s  (wall, under load)",
        count as f64 / s,
        mb / s
    );
    let (iw, ic) = (median(imaplib_wall.clone()), median(imaplib_cpu));
    println!(
        "raw imaplib UID FETCH:  {:>8.0} msg/s {:>7.1} MB/s  {iw:.2} s  {imaplib_wall:.2?}  (wall, under load; client CPU {ic:.2} s)",
        count as f64 / iw,
        mb / iw
    );
    println!(
        "ratio sync/raw: {:.2}; sync/imaplib (the issue's floor): {:.2}   (target >= 0.70)",
        f / s,
        iw / s
    );
    // Each round's ratio: that round's imaplib wall over its sync's.
    let per_round = |imaplib: &[f64]| -> Vec<f64> {
        imaplib
            .iter()
            .zip(&costs)
            .map(|(i, c)| i / c.wall)
            .collect()
    };
    let rounds = per_round(&imaplib_wall);
    println!(
        "sync/imaplib round by round (each round's imaplib fetch and sync, the sync first in \
         every other round): median {:.2} {rounds:.2?}",
        median(rounds.clone())
    );
    if runs > 1 {
        let by = |first: bool| -> Vec<f64> {
            rounds
                .iter()
                .zip(&sync_first)
                .filter(|r| *r.1 == first)
                .map(|r| *r.0)
                .collect()
        };
        println!(
            "  the sync measured second (after imaplib): median {:.2}; first: median {:.2}",
            median(by(false)),
            median(by(true))
        );
    }
    // The sync's wall is its whole process (start, store open and close, exit); imaplib's is
    // what the script times, from its connect to its logout. The same measure for both:
    let whole = per_round(&imaplib_process);
    println!(
        "imaplib as a whole process (interpreter start and exit included, as in the sync's wall): \
         {:.2} s; sync/imaplib {:.2}, round by round median {:.2}",
        median(imaplib_process.clone()),
        median(imaplib_process.clone()) / s,
        median(whole)
    );
    print_cost("sync", &sync, count, &costs);
    println!(
        "store ({}): {:.1} MB",
        if pg { "PostgreSQL" } else { "SQLite" },
        db_size as f64 / 1e6
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "machine CPU busy during the sync (all processes, the database server's included): \
         {:.1} core-s",
        median(machine.clone()),
    );
    println!(
        "machine CPU busy during the raw fetch (all processes, {cores} cores): {:.1} core-s",
        median(floor_cpu),
    );
    // What the machine spends beside the client is mostly the server's (Dovecot's login
    // process does the TLS, its imap process reads the mail and, for the sync only, sets
    // \Seen: a rename per message in a Maildir). Neither client's wall can be shorter than
    // the machine's busy time spread over its cores.
    let (busy, ibusy) = (median(machine.clone()), median(imaplib_busy.clone()));
    println!(
        "beside the client: sync {:.2} core-s, imaplib {:.2} core-s; busy time / {cores} cores \
         (the shortest wall the work allows): sync {:.2} s, imaplib {:.2} s",
        busy - sync.cpu(),
        ibusy - ic,
        busy / cores as f64,
        ibusy / cores as f64,
    );
    // How much of that is the post-action's: the reset before each sync makes the same
    // renames backwards (a doveadm process of its own, its start included).
    println!(
        "the server's share of marking every message \\Seen (measured as the reset before each \
         sync, the same renames backwards): {:.2} core-s",
        median(unseen_busy),
    );
    // The target compares walls, and neither client reaches its shortest: what each waited
    // beyond it (a core idle while the other works) is as much of the ratio as the work.
    let n = cores as f64;
    let waited = |wall: &[f64], busy: &[f64]| -> f64 {
        median(wall.iter().zip(busy).map(|(w, b)| w - b / n).collect())
    };
    let sync_walls: Vec<f64> = costs.iter().map(|c| c.wall).collect();
    let unwaited: Vec<f64> = imaplib_wall
        .iter()
        .zip(&machine)
        .map(|(i, b)| i / (b / n))
        .collect();
    println!(
        "waited beyond the shortest wall (medians of the rounds): sync {:.2} s, imaplib {:.2} s; \
         the ratio had the sync not waited: {:.2}",
        waited(&sync_walls, &machine),
        waited(&imaplib_wall, &imaplib_busy),
        median(unwaited),
    );
    drop(postgres);
    drop(stop);
}

/// A throw-away PostgreSQL cluster (tests/env/pg-server) for `bench pg`.
struct Postgres {
    script: PathBuf,
    dir: PathBuf,
    env: std::collections::HashMap<String, String>,
}

impl Postgres {
    fn start(root: &Path, dir: &Path) -> Postgres {
        let script = root.join("tests/env/pg-server");
        let out = sh(Command::new("bash")
            .arg(&script)
            .arg("-d")
            .arg(dir)
            .arg("start"));
        let env = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim_start_matches("export ").to_owned(),
                    v.trim_matches('"').to_owned(),
                )
            })
            .collect();
        Postgres {
            script,
            dir: dir.to_owned(),
            env,
        }
    }

    fn var(&self, k: &str) -> &str {
        self.env.get(k).map_or("", String::as_str)
    }

    fn store_toml(&self) -> String {
        format!(
            "[store]\nurl = \"{}\"\npassword = \"{}\"\nca-file = \"{}\"\n",
            self.var("PG_URL"),
            self.var("PG_PASSWORD"),
            self.var("PG_CA_FILE")
        )
    }

    fn psql(&self, sql: &str) -> String {
        sh(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/psql", self.var("PG_BIN")))
            .args([
                "-X",
                "-At",
                "-h",
                self.var("PG_SOCKET_DIR"),
                "-p",
                self.var("PG_PORT"),
                "-d",
                "mailticket",
                "-c",
                sql,
            ]))
    }

    /// Drops every table: the next sync starts on an empty database.
    fn empty(&self) {
        self.psql(
            "SET client_min_messages TO warning; DROP SCHEMA public CASCADE; \
             CREATE SCHEMA public AUTHORIZATION mailticket",
        );
    }

    /// The database's size on disk, in bytes.
    fn size(&self) -> u64 {
        self.psql("SELECT pg_database_size('mailticket')")
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("-d")
            .arg(&self.dir)
            .arg("stop")
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `[[mailbox]]` table for every `user:password` of `users` on the Dovecot in `dir`
/// (implicit TLS, its CA).
fn mailboxes_toml(users: &str, dir: &Path) -> String {
    let mut toml = String::new();
    for entry in users.split_whitespace() {
        let (user, pass) = entry.split_once(':').expect("user:pass");
        toml += &format!(
            "[[mailbox]]\nname = \"{user}\"\nhost = \"localhost\"\nport = {IMAPS_PORT}\n\
             ca-file = \"{}\"\nusername = \"{user}\"\npassword = \"{pass}\"\n",
            dir.join("tls/ca.crt").display()
        );
    }
    toml
}

/// Stops the Dovecot and removes its folder when dropped.
fn scopeguard(root: &Path, dir: &Path) -> impl Drop + use<> {
    stop_on_drop(
        root,
        "imap-server",
        dir,
        &[
            ("IMAP_PORT", IMAP_PORT.to_string()),
            ("IMAPS_PORT", IMAPS_PORT.to_string()),
        ],
    )
}

/// Stops the test server SCRIPT (tests/env) running from DIR, and removes DIR, when dropped.
fn stop_on_drop(
    root: &Path,
    script: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> impl Drop + use<> {
    struct Guard(PathBuf, PathBuf, Vec<(String, String)>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(&self.0)
                .arg("-d")
                .arg(&self.1)
                .arg("stop")
                .envs(self.2.iter().map(|(k, v)| (k, v)))
                .status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    Guard(
        root.join("tests/env").join(script),
        dir.to_owned(),
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

fn mailticket_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("mailticket");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release --bins"
    );
    bin
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |p| p.1);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // fields after "(comm)": state ppid ... utime is field 14, stime 15 (1-based overall)
    f.get(10).unwrap_or(&0) + f.get(11).unwrap_or(&0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn watch_bench(messages: usize, mailboxes: usize) {
    use std::io::{BufRead, Write};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = mailticket_bin();
    let dir = PathBuf::from(format!("/tmp/mt-benchw-{}", std::process::id()));
    let mut users = vec!["support:support-pass".to_owned()];
    users.extend((1..mailboxes).map(|i| format!("u{i:03}:pw{i:03}")));
    let users = users.join(" ");
    let server =
        |args: &[&str]| imap_server_with(&root, &dir, args, &[("IMAP_USERS", users.as_ref())]);
    server(&["start"]);
    let stop = scopeguard(&root, &dir);

    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let config_path = work.join("mailticket.toml");
    let mut config = String::from("[store]\npath = \"bench.db\"\n");
    config += &mailboxes_toml(&users, &dir);
    std::fs::write(&config_path, config).expect("write config");

    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config_path)
        .args(["--log-format", "json", "watch"])
        .current_dir(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let now = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &v["fields"];
            let event = match fields["message"].as_str() {
                Some("connected") => "connected".to_owned(),
                Some("created") => {
                    format!("created {}", fields["message_id"].as_str().unwrap_or(""))
                }
                Some(m) if v["level"] == "ERROR" || v["level"] == "WARN" => {
                    eprintln!("watch: {m} {fields}");
                    continue;
                }
                _ => continue,
            };
            if tx.send((event, now)).is_err() {
                break;
            }
        }
    });

    let t0 = Instant::now();
    let mut connected = 0;
    while connected < mailboxes {
        let (event, _) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("all mailboxes connect");
        if event == "connected" {
            connected += 1;
        }
    }
    println!(
        "{mailboxes} mailboxes connected in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));

    let mut latencies = Vec::new();
    for i in 0..messages {
        let id = format!("bench-{i}-{}@example.net", std::process::id());
        let msg = format!(
            "From: Customer {i} <c{i}@example.net>\r\nTo: support@example.com\r\n\
             Subject: Latency {i}\r\nDate: Mon, 06 Jan 2025 10:00:00 +0000\r\n\
             Message-ID: <{id}>\r\n\r\nHello, number {i}.\r\n"
        );
        let sent = Instant::now();
        let mut save = Command::new("bash")
            .arg(root.join("tests/env/imap-server"))
            .arg("-d")
            .arg(&dir)
            .args(["doveadm", "save", "-u", "support", "-m", "INBOX"])
            .env("IMAP_PORT", IMAP_PORT.to_string())
            .env("IMAPS_PORT", IMAPS_PORT.to_string())
            .env("IMAP_USERS", &users)
            .stdin(Stdio::piped())
            .spawn()
            .expect("doveadm save");
        save.stdin
            .take()
            .expect("stdin")
            .write_all(msg.as_bytes())
            .expect("write");
        assert!(save.wait().expect("wait").success());
        let want = format!("created {id}");
        loop {
            let (event, at) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the message becomes a ticket");
            if event == want {
                latencies.push(at.duration_since(sent).as_secs_f64());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "new mail -> ticket over {messages} appends: p50 {:.3} s, p99 {:.3} s, max {:.3} s, min {:.3} s   (targets p50 <= 0.8, max <= 2)",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0.0),
        sorted.first().copied().unwrap_or(0.0),
    );

    std::thread::sleep(Duration::from_secs(3));
    let idle_secs = 30;
    let (c0, w0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(idle_secs));
    let (c1, wall) = (cpu_ticks(pid), w0.elapsed().as_secs_f64());
    let rss = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    let hwm = proc_field(pid, "status", "VmHWM:").unwrap_or(0);
    let threads = proc_field(pid, "status", "Threads:").unwrap_or(0);
    println!(
        "idle with {mailboxes} mailboxes: RSS {:.1} MB (peak {:.1} MB), {threads} threads, CPU {:.2} s over {wall:.0} s = {:.3} %   (targets <= 150 MB, no measurable CPU)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (c1 - c0) as f64 / 100.0,
        (c1 - c0) as f64 / wall,
    );

    let t = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let status = child.wait().expect("wait");
    println!(
        "SIGTERM -> exit {:?} after {:.2} s ({mailboxes} sessions logged out)",
        status.code(),
        t.elapsed().as_secs_f64()
    );
    drop(stop);
}

fn login_bench(runs: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = mailticket_bin();
    let dir = PathBuf::from(format!("/tmp/mt-benchl-{}", std::process::id()));
    let odir = PathBuf::from(format!("/tmp/mt-benchl-{}-oauth2", std::process::id()));
    let oauth2 = |args: &[&str]| {
        sh(Command::new("bash")
            .arg(root.join("tests/env/oauth2-server"))
            .arg("-d")
            .arg(&odir)
            .args(args)
            .env("OAUTH2_PORT", "24080")
            .env("OAUTH2_TLS_PORT", "0"))
    };
    oauth2(&["start"]);
    let _stop_oauth2 = stop_on_drop(
        &root,
        "oauth2-server",
        &odir,
        &[("OAUTH2_PORT", "24080".to_owned())],
    );
    let key = odir.join("jwt.key");
    imap_server_with(
        &root,
        &dir,
        &["start"],
        &[
            ("IMAP_OAUTH2", "1".as_ref()),
            ("OAUTH2_JWT_KEY_FILE", key.as_ref()),
        ],
    );
    let _stop = scopeguard(&root, &dir);

    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let mailbox = |auth: &str| {
        format!(
            "[store]\npath = \"bench.db\"\n[[mailbox]]\nname = \"support\"\nhost = \"localhost\"\n\
             port = {IMAPS_PORT}\nca-file = \"{}\"\nusername = \"support\"\n{auth}\n",
            dir.join("tls/ca.crt").display()
        )
    };
    let password = work.join("password.toml");
    std::fs::write(&password, mailbox("password = \"support-pass\"")).expect("write");
    let xoauth2 = work.join("xoauth2.toml");
    std::fs::write(
        &xoauth2,
        mailbox(
            "auth = \"xoauth2\"\noauth2 = { flow = \"client-credentials\", \
             token-url = \"http://127.0.0.1:24080/token\", client-id = \"connector\", \
             client-secret = \"connector-secret\", scope = \"https://outlook.office365.com/.default\" }",
        ),
    )
    .expect("write");
    let sync = |config: &Path| {
        let t0 = Instant::now();
        let st = Command::new(&bin)
            .arg("--config")
            .arg(config)
            .args(["-q", "sync"])
            .current_dir(&work)
            .stdout(Stdio::null())
            .status()
            .expect("sync");
        assert!(st.success(), "sync failed");
        t0.elapsed().as_secs_f64() * 1000.0
    };
    let forget_token = || {
        let db = work.join("bench.db");
        if db.exists() {
            rusqlite::Connection::open(&db)
                .expect("open")
                .execute("DELETE FROM oauth2_token", [])
                .expect("delete");
        }
    };
    // warm up: the store exists, the first token is in it
    sync(&password);
    sync(&xoauth2);
    let (mut pw, mut cached, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        pw.push(sync(&password));
        cached.push(sync(&xoauth2));
        forget_token();
        fresh.push(sync(&xoauth2));
    }
    let grants = std::fs::read_to_string(odir.join("grants.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("client_credentials"))
        .count();
    println!("mailticket sync of an empty mailbox, implicit TLS, median of {runs} runs:");
    println!(
        "  password (LOGIN)                       {:7.1} ms",
        median(pw)
    );
    println!(
        "  XOAUTH2, access token cached in store  {:7.1} ms",
        median(cached)
    );
    println!(
        "  XOAUTH2, new client-credentials grant  {:7.1} ms",
        median(fresh)
    );
    println!("  token requests made: {grants} (expected {})", runs + 1);
}

fn acks_bench(n: usize) {
    const SMTP_PORT: u16 = 24025;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = mailticket_bin();
    let dir = PathBuf::from(format!("/tmp/mt-bencha-{}", std::process::id()));
    let env = [
        ("SMTP_PORT", SMTP_PORT.to_string()),
        ("SMTPS_PORT", "0".to_owned()),
    ];
    let sink = |arg: &str| {
        sh(Command::new("bash")
            .arg(root.join("tests/env/smtp-sink"))
            .arg("-d")
            .arg(&dir)
            .arg(arg)
            .envs(env.iter().map(|(k, v)| (k, v))))
    };
    sink("start");
    let _stop = stop_on_drop(&root, "smtp-sink", &dir, &env);
    let work = dir.join("work");
    let mail = work.join("mail");
    std::fs::create_dir_all(&mail).expect("mkdir");
    for i in 0..n {
        let msg = format!(
            "From: Customer {i} <c{i}@customer.example>\r\nTo: support@example.com\r\n\
             Subject: Request {i}\r\nDate: Mon, 06 Jan 2025 10:00:00 +0000\r\n\
             Message-ID: <ack-{i}@customer.example>\r\n\r\nHello, number {i}.\r\n"
        );
        std::fs::write(mail.join(format!("{i:05}.eml")), msg).expect("write");
    }
    let config = |port: u16| {
        format!(
            "[store]\npath = \"bench.db\"\n[smtp]\nhost = \"localhost\"\nport = {port}\n\
             tls = \"starttls\"\nca-file = \"{}\"\nusername = \"support\"\n\
             password = \"support-pass\"\nfrom = \"Support <support@example.com>\"\n\
             [ack]\nenabled = true\nmax-age = 8640000000\n",
            dir.join("tls/ca.crt").display()
        )
    };
    let (down, up) = (work.join("down.toml"), work.join("up.toml"));
    std::fs::write(&down, config(1)).expect("write");
    std::fs::write(&up, config(SMTP_PORT)).expect("write");
    let run = |cfg: &Path, args: &[&str]| {
        Command::new(&bin)
            .arg("--config")
            .arg(cfg)
            .args(["-q"])
            .args(args)
            .current_dir(&work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run mailticket")
    };
    // Queued while the server is down; then due now.
    run(
        &down,
        &["import", "--ack", mail.to_str().expect("utf-8 path")],
    );
    let db = rusqlite::Connection::open(work.join("bench.db")).expect("open");
    db.execute(
        "UPDATE outbox SET status = 'pending', next_attempt_at = 0, attempts = 0 \
         WHERE status = 'pending'",
        [],
    )
    .expect("make due");
    let queued: i64 = db
        .query_row(
            "SELECT count(*) FROM outbox WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    let t0 = Instant::now();
    let st = run(&up, &["outbox", "--send"]);
    let dt = t0.elapsed().as_secs_f64();
    assert!(st.success(), "outbox --send failed");
    let mut connections = std::collections::HashSet::new();
    let mut sent = 0;
    for e in std::fs::read_dir(dir.join("messages"))
        .expect("messages")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path()).expect("read"))
                    .expect("json");
            sent += 1;
            connections.insert(v["connection"].to_string());
        }
    }
    println!(
        "{queued} acks queued, {sent} delivered to the loopback sink (STARTTLS + AUTH) in \
         {dt:.2} s = {:.0} acks/s over {} connection(s)   (target < 5 s; wall, under load)",
        sent as f64 / dt,
        connections.len()
    );
}
