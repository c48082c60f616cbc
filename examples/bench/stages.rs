//! `bench stages [SMALL LARGE RUNS]` (default 10000 1000 3): the two CPU-heavy stages of a
//! sync, in this process and on one thread each, over the sync benchmark's own messages
//! (`tests/env/mailgen.py`, the same seed, CR LF line ends as IMAP serves them):
//!
//! - prepare: `pipeline::prepare` (parse, classify, compress) of every message, the small
//!   and the large ones apart;
//! - store: `pipeline::commit` of every prepared message into a new SQLite store, 20 to a
//!   group commit (about what a benchmark sync makes), the writer's own checkpoints
//!   included (a sync moves most of them to a thread of their own).
//!
//! Each figure is the CPU time of the thread that did the work (`/proc/thread-self/stat`,
//! in 10 ms ticks), the best of RUNS passes. Without the network, Dovecot and the hand-offs
//! between threads, these move by a few per cent from run to run where a whole sync moves
//! by a fifth: the place to measure a change to either stage.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mailticket::pipeline::{Plan, Prepared, Rules};

/// The CPU seconds (user + system) this thread has used so far.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// mailgen's messages for `args` (`--small N`, ...), written to `dir`, in file-name order,
/// with CR LF line ends as IMAP serves them. Shared with `bench parse`.
pub fn generated(dir: &Path, args: &[&str]) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("python3")
        .arg(root.join("tests/env/mailgen.py"))
        .arg("maildir")
        .arg(dir)
        .args(args)
        .status()
        .expect("run tests/env/mailgen.py");
    assert!(status.success(), "mailgen failed: {status}");
    let mut files: Vec<_> = std::fs::read_dir(dir.join("new"))
        .expect("read the generated messages")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let lf = std::fs::read(p).expect("read a message");
            let mut crlf = Vec::with_capacity(lf.len() + lf.len() / 16);
            for &b in &lf {
                if b == b'\n' {
                    crlf.push(b'\r');
                }
                crlf.push(b);
            }
            crlf
        })
        .collect()
}

/// Runs the benchmark.
pub fn run(small: usize, large: usize, runs: usize) {
    let dir = std::env::temp_dir().join(format!("mt-bench-stages-{}", std::process::id()));
    let (small, large) = (small.to_string(), large.to_string());
    let all = generated(&dir.join("mail"), &["--small", &small, "--large", &large]);
    // mailgen's large messages are about 200 KB, its small ones a few KB.
    let (small, large): (Vec<_>, Vec<_>) = all.into_iter().partition(|m| m.len() < 50_000);
    let me = mailticket::classify::Identity::default();
    let runs = runs.max(1);
    for (name, set) in [("small", &small), ("large", &large)] {
        if set.is_empty() {
            continue;
        }
        let mb = set.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
        let mut best = f64::MAX;
        for _ in 0..runs {
            let copies = set.clone();
            let cpu = thread_cpu();
            for m in copies {
                std::hint::black_box(mailticket::pipeline::prepare(&me, m));
            }
            best = best.min(thread_cpu() - cpu);
        }
        println!(
            "prepare {name}: {} messages, {mb:.1} MB: CPU {best:.2} s, {:.1} µs per message (best of {runs})",
            set.len(),
            best * 1e6 / set.len() as f64,
        );
    }
    let prepared: Vec<Prepared> = small
        .into_iter()
        .chain(large)
        .map(|m| mailticket::pipeline::prepare(&me, m))
        .collect();
    let rules = Rules::default();
    let origin = mailticket::store::Origin::unplaced("bench", "support");
    let path = dir.join("stages.db");
    let (mut best, mut wall, mut size) = (f64::MAX, 0.0, 0);
    for _ in 0..runs {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
        let mut store = mailticket::store::Store::open(&path).expect("open the store");
        let (cpu, t) = (thread_cpu(), Instant::now());
        for group in prepared.chunks(20) {
            store.begin_group().expect("begin a group");
            for p in group {
                let plan = Plan {
                    rules: &rules,
                    ack: None,
                    progress: None,
                };
                mailticket::pipeline::commit(&mut store, p, &origin, 0, plan).expect("commit");
            }
            store.end_group().expect("commit a group");
        }
        let spent = thread_cpu() - cpu;
        if spent < best {
            (best, wall) = (spent, t.elapsed().as_secs_f64());
        }
        drop(store);
        size = std::fs::metadata(&path).map_or(0, |m| m.len());
    }
    println!(
        "store: {} messages in groups of 20: CPU {best:.2} s, {:.1} µs per message, wall {wall:.2} s \
         (best of {runs}); store {:.1} MB",
        prepared.len(),
        best * 1e6 / prepared.len().max(1) as f64,
        size as f64 / 1e6,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
