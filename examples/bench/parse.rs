//! `bench parse [SMALL OUTLOOK RUNS]` (default 3000 2000 5): the parse alone, in this
//! process, of SMALL of the benchmark's small messages and of OUTLOOK messages shaped as
//! Outlook sends them (a plain and an HTML part, both quoted-printable; see
//! `tests/env/mailgen.py`), with CR LF line ends as IMAP serves them. Prints the time per
//! message and the throughput of the best of RUNS passes over each set.

use std::time::Instant;

/// Runs the benchmark.
pub fn run(small: usize, outlook: usize, runs: usize) {
    let dir = std::env::temp_dir().join(format!("mt-bench-parse-{}", std::process::id()));
    for (name, small, outlook) in [("small", small, 0), ("outlook", 0, outlook)] {
        let (small, outlook) = (small.to_string(), outlook.to_string());
        let args = ["--small", &small, "--outlook", &outlook];
        let messages = super::stages::generated(&dir.join(name), &args);
        if messages.is_empty() {
            continue;
        }
        let bytes: usize = messages.iter().map(Vec::len).sum();
        let mut best = f64::MAX;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            for m in &messages {
                let parsed = mailticket::message::parse(m).expect("a generated message parses");
                std::hint::black_box(parsed);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "parse {name}: {} messages, {:.1} MB: {:.1} µs per message, {:.0} MB/s (best of {runs})",
            messages.len(),
            bytes as f64 / 1e6,
            best * 1e6 / messages.len() as f64,
            bytes as f64 / 1e6 / best,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
