//! The fuzz target's body (`tests/fuzz/body.rs`, also run by `cargo fuzz` in `fuzz/`) over a
//! bounded, seeded stream of mutated corpus samples, so every test run exercises it.

#[path = "../fuzz/body.rs"]
mod body;

use std::path::Path;

use mailticket::store::Store;

use crate::harness::Prng;

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "eml") {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// One random edit: flip, insert, delete, duplicate a slice, or splice in a token that
/// matters to the parser and the classifier.
fn mutate(rng: &mut Prng, data: &mut Vec<u8>) {
    const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n\n",
        b"--",
        b": ",
        b"<>",
        b"[#",
        b"]",
        b"=?UTF-8?B?",
        b"?=",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n",
        b"Content-Type: message/rfc822\n\n",
        b"In-Reply-To: <mt.1.1.aaaaaaaa@x>\n",
        b"Re: ",
        b"\xe5\x9b\x9e\xe5\xa4\x8d\xef\xbc\x9a",
        b"\xff\xfe",
        b"\0",
    ];
    // `range` is inclusive: `at` may be `len` (an insertion point), never more.
    let at = rng.range(0, data.len() as u64) as usize;
    match rng.range(0, 5) {
        0 if at < data.len() => data[at] ^= 1 << rng.range(0, 7),
        1 => {
            let t = TOKENS[rng.range(0, TOKENS.len() as u64 - 1) as usize];
            data.splice(at..at, t.iter().copied());
        }
        2 if at < data.len() => {
            let end = (at + rng.range(1, 64) as usize).min(data.len());
            data.drain(at..end);
        }
        3 if at < data.len() => {
            let end = (at + rng.range(1, 256) as usize).min(data.len());
            let chunk = data[at..end].to_vec();
            data.splice(at..at, chunk);
        }
        _ => data.truncate(at),
    }
}

#[test]
fn fuzz_body_survives_mutated_corpus() {
    let seeds = seeds();
    assert!(!seeds.is_empty());
    let mut rng = Prng::new(0x6d61_696c);
    let mut store = Store::open_in_memory().unwrap();
    let mut runs = 0;
    for round in 0..40 {
        for s in &seeds {
            let mut data = s.clone();
            for _ in 0..=(round % 6) {
                mutate(&mut rng, &mut data);
            }
            body::run(&mut store, &data);
            runs += 1;
        }
    }
    // Plus raw noise.
    for _ in 0..200 {
        let n = rng.range(0, 2048) as usize;
        body::run(&mut store, &rng.bytes(n));
        runs += 1;
    }
    eprintln!("fuzz body: {runs} inputs");
}
