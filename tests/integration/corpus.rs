//! The golden corpus: `tests/corpus/<family>/<name>.eml`, each with `<name>.expect` beside
//! it, run with LF and with CRLF line endings through the same pipeline as `import`.
//!
//! Families are judged one message per fresh store; every folder under `threads/` is one
//! scenario whose messages go, in name order, into one store (with the scenario's
//! `config.toml` when it has one). An `.expect` file holds `key: value` lines:
//!
//! | key | meaning |
//! |---|---|
//! | `kind` | the stored kind |
//! | `reason` | a reason that must be present (repeatable) |
//! | `reasons: none` | no reasons at all |
//! | `may-ack` | `yes` / `no`: whether an acknowledgement is allowed |
//! | `failed` / `failed-count` | a failed recipient of a bounce / how many |
//! | `original-id` | the Message-ID of the original a bounce carries |
//! | `ticket` | a label: same label, same ticket; a new label, a new ticket |
//! | `status`, `customer`, `subject` | of the message's ticket after it was stored |
//! | `undeliverable` / `not-undeliverable` | an address that is / is not marked undeliverable |
//! | `close-after` | `yes`: close the ticket after this message (for the next ones) |
//! | `new-lines` | non-blank lines in the new part of the text (see `mailticket::quote`) |
//! | `quoted-lines` / `signature-lines` | non-blank lines of quoted history / signature hidden |
//! | `new-contains` / `new-lacks` | text the new part holds / does not hold (repeatable) |
//! | `text-contains` | text the full stored text holds (repeatable; `\n` is a line break) |
//! | `inline` / `attachment` | the file name of an inline / a real attachment |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mailticket::classify::{Identity, classify};
use mailticket::config::Config;
use mailticket::message::parse;
use mailticket::pipeline::{Plan, Rules, process};
use mailticket::store::{Origin, Outcome, Store, TicketStatus};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The sorted subfolders of `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn emls(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    v.sort();
    v
}

fn expectations(eml: &Path) -> Vec<(String, String)> {
    let path = eml.with_extension("expect");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (every sample needs one)", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: not `key: value`: {l}", path.display()));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn crlf(raw: &[u8]) -> Vec<u8> {
    let lf = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    lf.replace('\n', "\r\n").into_bytes()
}

/// One scenario's store and what its labels stand for.
struct Scenario {
    store: Store,
    rules: Rules,
    me: Identity,
    labels: BTreeMap<String, i64>,
}

impl Scenario {
    fn new(dir: &Path) -> Scenario {
        let config_path = dir.join("config.toml");
        let config = if config_path.exists() {
            Config::load(&config_path).unwrap()
        } else {
            Config::default()
        };
        let mut addresses = config.own_addresses();
        if addresses.is_empty() {
            addresses.push("support@example.com".into());
        }
        Scenario {
            store: Store::open_in_memory().unwrap(),
            rules: Rules::from_config(&config),
            me: Identity { addresses },
            labels: BTreeMap::new(),
        }
    }

    /// Runs one sample; returns what did not match.
    fn check(&mut self, name: &str, raw: &[u8], expect: &[(String, String)]) -> Vec<String> {
        let mut bad = Vec::new();
        let mut mismatch = |what: &str, want: &str, got: &dyn std::fmt::Debug| {
            bad.push(format!("{what}: expected {want:?}, got {got:?}"));
        };
        let parsed = parse(raw).unwrap_or_else(|e| panic!("{name}: does not parse: {e}"));
        let class = classify(&parsed, &self.me);
        let origin = Origin::unplaced(format!("corpus:{name}"), "support");
        let plan = Plan {
            rules: &self.rules,
            ack: None,
            progress: None,
        };
        let outcome = process(&mut self.store, &self.me, raw, &origin, 1_700_000_000, plan)
            .unwrap()
            .outcome;
        let ticket = match outcome {
            Outcome::Created(t) | Outcome::Threaded(t) => t,
            other => panic!("{name}: stored as {other:?}"),
        };
        let (row, messages) = self.store.ticket(ticket).unwrap().unwrap();
        let stored = messages
            .iter()
            .rev()
            .find(|m| m.message_id == parsed.message_id)
            .unwrap();
        let failed = parsed.failed_recipients();
        let now = mailticket::time::now();
        for (k, v) in expect {
            match k.as_str() {
                "kind" if stored.kind != *v => mismatch("kind", v, &stored.kind),
                "reason" if !stored.reasons.contains(v) => {
                    mismatch("reason present", v, &stored.reasons)
                }
                "reasons" if v == "none" && !stored.reasons.is_empty() => {
                    mismatch("reasons", "none", &stored.reasons)
                }
                "may-ack" if class.may_ack() != (v == "yes") => {
                    mismatch("may-ack", v, &(class.may_ack(), &class.blocks_ack))
                }
                "failed" if !failed.contains(v) => mismatch("failed recipient", v, &failed),
                "failed-count" if failed.len().to_string() != *v => {
                    mismatch("failed-count", v, &failed)
                }
                "original-id" => {
                    let got = parsed.original_anywhere().and_then(|o| o.message_id);
                    if got.as_deref() != Some(v.as_str()) {
                        mismatch("original-id", v, &got);
                    }
                }
                "ticket" => match self.labels.get(v) {
                    Some(&t) if t != ticket => {
                        mismatch("ticket", &format!("{v} (#{t})"), &format!("#{ticket}"))
                    }
                    None => {
                        if let Some((other, _)) = self.labels.iter().find(|(_, t)| **t == ticket) {
                            mismatch(
                                "ticket",
                                &format!("new ticket {v}"),
                                &format!("#{ticket}, label {other}"),
                            );
                        }
                        self.labels.insert(v.clone(), ticket);
                    }
                    _ => {}
                },
                "status" if row.status.as_str() != v => {
                    mismatch("ticket status", v, &row.status.as_str())
                }
                "customer" if row.customer != *v => mismatch("customer", v, &row.customer),
                "subject" if row.subject != *v => mismatch("ticket subject", v, &row.subject),
                "undeliverable" if !self.store.is_undeliverable(v, now).unwrap() => {
                    mismatch("undeliverable", v, &false)
                }
                "not-undeliverable" if self.store.is_undeliverable(v, now).unwrap() => {
                    mismatch("not undeliverable", v, &true)
                }
                "close-after" if v == "yes" => {
                    assert!(self.store.set_status(ticket, TicketStatus::Closed).unwrap());
                }
                "kind" | "reason" | "reasons" | "may-ack" | "failed" | "failed-count"
                | "status" | "customer" | "subject" | "undeliverable" | "not-undeliverable"
                | "close-after" => {}
                other => match text_expectation(other, v, stored) {
                    Some(Ok(())) => {}
                    Some(Err(got)) => mismatch(other, v, &Raw(got)),
                    None => panic!("{name}: unknown expectation key {other:?}"),
                },
            }
        }
        if !bad.is_empty() {
            bad.push(format!(
                "(stored kind {:?}, reasons {:?}, ticket #{ticket})",
                stored.kind, stored.reasons
            ));
        }
        bad
    }
}

/// A text shown as it is in a mismatch report.
struct Raw(String);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The expectations on a stored message's text and attachments: `None` for another key.
fn text_expectation(
    key: &str,
    want: &str,
    m: &mailticket::store::MessageRow,
) -> Option<Result<(), String>> {
    let split = mailticket::quote::split(&m.text);
    let want_text = want.replace("\\n", "\n");
    let count = |s: &str| s.lines().filter(|l| !l.trim().is_empty()).count();
    let attached = |inline: bool| {
        m.attachments
            .iter()
            .any(|a| a.filename == want && a.inline == inline)
    };
    let ok = match key {
        "new-lines" => count(&split.new).to_string() == want,
        "quoted-lines" => split.quoted_lines.to_string() == want,
        "signature-lines" => split.signature_lines.to_string() == want,
        "new-contains" => split.new.contains(&want_text),
        "new-lacks" => !split.new.contains(&want_text),
        "text-contains" => m.text.contains(&want_text),
        "inline" => attached(true),
        "attachment" => attached(false),
        _ => return None,
    };
    Some(if ok {
        Ok(())
    } else {
        Err(format!(
            "a new part ({} quoted, {} signature lines hidden):\n{}\n--- full text:\n{}\n--- attachments: {:?}",
            split.quoted_lines,
            split.signature_lines,
            split.new,
            m.text,
            m.attachments
                .iter()
                .map(|a| (&a.filename, a.inline))
                .collect::<Vec<_>>()
        ))
    })
}

#[test]
fn golden_corpus() {
    let root = corpus_dir();
    let mut runs = 0;
    let mut report = String::new();
    for family in subdirs(&root) {
        let threaded = family.ends_with("threads");
        // (scenario folder, samples that share a store)
        let mut groups: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
        if threaded {
            for d in subdirs(&family) {
                let e = emls(&d);
                groups.push((d, e));
            }
        } else {
            for e in emls(&family) {
                groups.push((family.clone(), vec![e]));
            }
        }
        for (dir, samples) in groups {
            for ending in ["LF", "CRLF"] {
                let mut sc = Scenario::new(&dir);
                for eml in &samples {
                    let name = eml.strip_prefix(&root).unwrap().display().to_string();
                    let mut raw = std::fs::read(eml).unwrap();
                    if ending == "CRLF" {
                        raw = crlf(&raw);
                    }
                    let bad = sc.check(&name, &raw, &expectations(eml));
                    runs += 1;
                    if !bad.is_empty() {
                        let _ = writeln!(report, "--- {name} [{ending}]");
                        for b in bad {
                            let _ = writeln!(report, "    {b}");
                        }
                    }
                }
            }
        }
    }
    assert!(runs > 0, "the corpus under {} is empty", root.display());
    assert!(
        report.is_empty(),
        "corpus mismatches ({runs} runs):\n{report}"
    );
    eprintln!("corpus: {runs} runs (LF and CRLF), all as expected");
}
