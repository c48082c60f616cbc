#![allow(clippy::expect_used, clippy::unwrap_used)]

//! Sync throughput against a real Dovecot on 127.0.0.1, in one run:
//!
//! 1. starts a throw-away Dovecot (tests/env/imap-server) and seeds 10,000 × 3 KB and
//!    1,000 × 200 KB messages (tests/env/mailgen.py);
//! 2. the floor: a raw `UID FETCH BODY.PEEK[]` of every message over TLS, in the same batches
//!    as a sync, without parsing or storing;
//! 3. `mailticket sync` of the same mailbox into a fresh store (the built binary, so its peak
//!    RSS is its own), with every message unseen again before each run.
//!
//! Prints messages/s, MB/s, the ratio sync/floor and the peak RSS (median of the runs).
//!
//! Run with `scripts/bench` (it builds in release mode first), or:
//! `cargo build --release --bins --examples && target/release/examples/bench [SMALL LARGE RUNS]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailticket::config::Config;

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
    sh(Command::new("bash")
        .arg(root.join("tests/env/imap-server"))
        .arg("-d")
        .arg(dir)
        .args(args)
        .env("IMAP_PORT", IMAP_PORT.to_string())
        .env("IMAPS_PORT", IMAPS_PORT.to_string()))
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

/// Peak RSS of a child, polled from /proc until it exits (VmHWM only grows).
fn run_measured(cmd: &mut Command) -> (Duration, u64) {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "sync failed: {st}");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (t0.elapsed(), peak_kb)
}

async fn raw_fetch(config: &Config) -> (usize, u64, Duration) {
    let mb = &config.mailboxes[0];
    let t0 = Instant::now();
    let mut imap =
        mailticket::imap::connect(mb, &mailticket::imap::password(mb).expect("password"))
            .await
            .expect("connect");
    imap.select(&mb.folder).await.expect("select");
    let sizes = imap.sizes("1:*").await.expect("sizes");
    let mut count = 0usize;
    let mut bytes = 0u64;
    for batch in sizes.chunks(500) {
        let uids: Vec<u32> = batch.iter().map(|p| p.0).collect();
        imap.fetch_each(&uids, |m| {
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
    let small: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let large: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
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
        ],
    );

    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let config_path = work.join("mailticket.toml");
    std::fs::write(
        &config_path,
        format!(
            "[store]\npath = \"bench.db\"\n[[mailbox]]\nname = \"support\"\nhost = \"localhost\"\n\
             port = {IMAPS_PORT}\nca-file = \"{}\"\nusername = \"support\"\npassword = \"support-pass\"\n",
            dir.join("tls/ca.crt").display()
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
    let (mut count, mut bytes) = (0, 0);
    for _ in 0..runs {
        let b0 = busy_seconds();
        let (c, b, dt) = rt.block_on(raw_fetch(&config));
        floor_cpu.push(busy_seconds() - b0);
        (count, bytes) = (c, b);
        floor.push(dt.as_secs_f64());
    }
    let mut sync = Vec::new();
    let mut sync_cpu = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        imap_server(
            &root,
            &dir,
            &[
                "doveadm", "flags", "remove", "-u", "support", "\\Seen", "mailbox", "INBOX", "all",
            ],
        );
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(work.join(format!("bench.db{ext}")));
        }
        let b0 = busy_seconds();
        let (dt, peak) = run_measured(
            Command::new(&bin)
                .arg("--config")
                .arg(&config_path)
                .args(["-q", "sync"]),
        );
        sync_cpu.push(busy_seconds() - b0);
        sync.push(dt.as_secs_f64());
        rss.push(peak as f64);
    }
    let db_size = std::fs::metadata(work.join("bench.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let (f, s) = (median(floor.clone()), median(sync.clone()));
    let mb = bytes as f64 / 1e6;
    println!(
        "messages: {count}, {mb:.1} MB as served; {runs} run(s), medians (all runs in brackets)"
    );
    println!(
        "raw UID FETCH over TLS: {:>8.0} msg/s {:>7.1} MB/s  {f:.2} s  {floor:.2?}",
        count as f64 / f,
        mb / f
    );
    println!(
        "mailticket sync:        {:>8.0} msg/s {:>7.1} MB/s  {s:.2} s  {sync:.2?}",
        count as f64 / s,
        mb / s
    );
    println!("ratio sync/raw: {:.2}   (target >= 0.80)", f / s);
    println!(
        "peak RSS of sync: {:.1} MB   (target <= 64 MB)   {:?}",
        median(rss.clone()) / 1024.0,
        rss.iter().map(|k| (k / 1024.0).round()).collect::<Vec<_>>()
    );
    println!("store size: {:.1} MB", db_size as f64 / 1e6);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "machine CPU busy (all processes, {cores} cores): raw fetch {:.1} core-s, sync {:.1} core-s",
        median(floor_cpu),
        median(sync_cpu)
    );
    drop(stop);
}

/// Stops the Dovecot and removes its folder when dropped.
fn scopeguard(root: &Path, dir: &Path) -> impl Drop {
    struct Guard(PathBuf, PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(self.0.join("tests/env/imap-server"))
                .arg("-d")
                .arg(&self.1)
                .arg("stop")
                .env("IMAP_PORT", IMAP_PORT.to_string())
                .env("IMAPS_PORT", IMAPS_PORT.to_string())
                .status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    Guard(root.to_owned(), dir.to_owned())
}
