//! Mailbox leases against a real PostgreSQL: claim, renew, release, the fair share over three
//! workers, a takeover after expiry with a higher token, and the fence that keeps a worker
//! that lost its mailbox from committing for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mailticket::lease::{
    self, Change, Changes, Claim, FENCE_SQL, Leases, LostWhy, Role, WorkerInfo,
};

use crate::harness::{Dovecot, Watcher, Workdir};
use crate::pg_harness::Postgres;

/// A plain connection to the test cluster as its `mailticket` role.
fn connect(port: u16) -> postgres::Client {
    postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={port} user=mailticket password={} dbname=mailticket connect_timeout=5",
            Postgres::PASSWORD
        ),
        postgres::NoTls,
    )
    .unwrap()
}

/// `[store]` for the test cluster (TLS verified with its CA).
fn store_config(pg: &Postgres) -> mailticket::config::StoreConfig {
    mailticket::config::StoreConfig {
        url: Some(pg.url()),
        password: Some(mailticket::secret::Secret::Plain(pg.password().to_owned())),
        ca_file: Some(pg.ca_file()),
        ..Default::default()
    }
}

/// A cluster with the store's schema, lease tables included, made by its migrations.
fn with_schema() -> Postgres {
    let pg = Postgres::start();
    mailticket::store::Store::open_pg(&store_config(&pg)).unwrap();
    pg
}

#[test]
fn the_migration_makes_the_lease_tables_as_the_lease_module_defines_them() {
    let pg = with_schema();
    let mut c = mailticket::store::pg::connect(&store_config(&pg)).unwrap();
    c.batch_execute("CREATE SCHEMA spec; SET search_path = spec")
        .unwrap();
    c.batch_execute(lease::SCHEMA).unwrap();
    let mut columns = |schema: &str| -> Vec<String> {
        c.query(
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
                    || ' ' || coalesce(column_default, '-')
             FROM information_schema.columns
             WHERE table_schema = $1 AND table_name IN ('worker', 'mailbox_lease')
             ORDER BY table_name, ordinal_position",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let (migrated, spec) = (columns("public"), columns("spec"));
    assert_eq!(migrated.len(), 14, "{migrated:?}");
    assert_eq!(migrated, spec);
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:02}")).collect()
}

fn leases(pg: &Postgres, lease_ms: u64, configured: &[String]) -> Leases {
    Leases::new(
        connect(pg.port()),
        WorkerInfo::this_process(Role::Watch),
        Duration::from_millis(lease_ms),
        configured.to_vec(),
    )
}

/// `mailbox -> (owner, token, takeovers)` as the database has it.
fn rows(pg: &Postgres) -> HashMap<String, (Option<String>, i64, i64)> {
    connect(pg.port())
        .query(
            "SELECT mailbox, owner, token, takeovers FROM mailbox_lease",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

fn acquired(c: &Changes) -> Vec<&str> {
    let mut v: Vec<&str> = c.acquired.iter().map(|(m, _)| m.as_str()).collect();
    v.sort_unstable();
    v
}

#[test]
fn a_lone_worker_claims_renews_and_releases() {
    let pg = with_schema();
    let mbs = names(3);
    let mut a = leases(&pg, 4000, &mbs);
    let id = a.worker().id.clone();
    // the first tick only announces the worker
    assert_eq!(a.tick().unwrap(), Changes::default());
    let c = a.tick().unwrap();
    assert_eq!(acquired(&c), vec!["m00", "m01", "m02"]);
    assert!(c.acquired.iter().all(|(_, t)| *t == 1), "{c:?}");
    for (m, (owner, token, takeovers)) in rows(&pg) {
        assert_eq!(
            (owner.as_deref(), token, takeovers),
            (Some(&*id), 1, 0),
            "{m}"
        );
    }
    let fences = a.fences();
    assert_eq!(fences.get("m01"), Some((id.clone(), 1)));
    // renewals change nothing and move the expiry
    let before: i64 = connect(pg.port())
        .query_one("SELECT max(expires_at) FROM mailbox_lease", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.tick().unwrap(), Changes::default());
    let after: i64 = connect(pg.port())
        .query_one("SELECT min(expires_at) FROM mailbox_lease", &[])
        .unwrap()
        .get(0);
    assert!(after > before, "{after} <= {before}");
    // a reload that drops a mailbox releases its lease
    a.set_configured(mbs[..2].to_vec());
    let c = a.tick().unwrap();
    assert_eq!(c.lost, vec![("m02".to_owned(), 1, LostWhy::Released)]);
    assert_eq!(rows(&pg)["m02"].0, None);
    a.release_all().unwrap();
    assert_eq!(fences.get("m01"), None);
    assert!(rows(&pg).values().all(|(o, t, _)| o.is_none() && *t == 1));
    let stopped: Option<i64> = connect(pg.port())
        .query_one("SELECT stopped_at FROM worker WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert!(stopped.is_some());
}

/// Ticks every worker in turn until a round changes nothing; returns how many rounds.
fn settle(workers: &mut [Leases]) -> usize {
    for round in 1..=40 {
        let mut changed = false;
        for w in workers.iter_mut() {
            let c = w.tick().unwrap();
            changed |= c != Changes::default();
        }
        if !changed && round > 1 {
            return round;
        }
    }
    panic!("no balance after 40 rounds");
}

/// Every mailbox held by exactly one of `workers`, as the database and their fences say;
/// returns how many each holds.
fn check_exclusive(pg: &Postgres, workers: &[Leases], mbs: &[String]) -> Vec<usize> {
    let db = rows(pg);
    let mut holders: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for (m, token) in w.fences().held() {
            assert_eq!(
                db[&m].0.as_deref(),
                Some(w.worker().id.as_str()),
                "the database disagrees on {m}"
            );
            assert_eq!(db[&m].1, token);
            *holders.entry(m).or_default() += 1;
        }
    }
    for m in mbs {
        assert_eq!(holders.get(m), Some(&1), "{m} held by {holders:?}");
    }
    workers.iter().map(|w| w.fences().held().len()).collect()
}

#[test]
fn three_workers_share_thirty_mailboxes_and_a_newcomer_gets_its_share() {
    let pg = with_schema();
    let mbs = names(30);
    // started together: each takes about a third at once
    let mut ws: Vec<Leases> = (0..3).map(|_| leases(&pg, 20_000, &mbs)).collect();
    let rounds = settle(&mut ws);
    let counts = check_exclusive(&pg, &ws, &mbs);
    assert_eq!(counts, vec![10, 10, 10], "after {rounds} rounds");

    // one worker alone holds all 30; two join: the old one gives up half its excess per
    // tick and the newcomers take them, with no mailbox ever held twice
    let pg = with_schema();
    let mut ws = vec![leases(&pg, 20_000, &mbs)];
    settle(&mut ws);
    assert_eq!(check_exclusive(&pg, &ws, &mbs), vec![30]);
    ws.push(leases(&pg, 20_000, &mbs));
    ws.push(leases(&pg, 20_000, &mbs));
    let rounds = settle(&mut ws);
    let counts = check_exclusive(&pg, &ws, &mbs);
    assert_eq!(counts, vec![10, 10, 10], "after {rounds} rounds");
    assert!(rounds <= 10, "{rounds} rounds to rebalance");
    // nothing was taken over: every move was a release
    assert!(rows(&pg).values().all(|(_, _, takeovers)| *takeovers == 0));
}

/// A worker with a 1.5 s lease that holds `m00`, the one mailbox, with token 1.
fn holder_of_m00(pg: &Postgres) -> Leases {
    let mut a = leases(pg, 1500, &names(1));
    a.tick().unwrap();
    assert_eq!(a.tick().unwrap().acquired, vec![("m00".to_owned(), 1)]);
    a
}

#[test]
fn an_expired_lease_is_taken_over_with_a_higher_token() {
    let pg = with_schema();
    let mbs = names(1);
    let mut a = holder_of_m00(&pg);
    let mut b = leases(&pg, 1500, &mbs);
    b.tick().unwrap();
    // a holds it, alive: b gets nothing
    assert_eq!(b.tick().unwrap(), Changes::default());
    // a stops ticking (paused); its lease expires, for the server and for a itself
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(a.fences().get("m00"), None, "a's own deadline passed");
    let c = b.tick().unwrap();
    assert_eq!(c.acquired, vec![("m00".to_owned(), 2)]);
    let db = rows(&pg);
    assert_eq!(db["m00"], (Some(b.worker().id.clone()), 2, 1));
    // a wakes up: the lease is gone, taken over by b
    let c = a.tick().unwrap();
    let b_id = b.worker().id.clone();
    assert_eq!(c.lost, vec![("m00".to_owned(), 1, LostWhy::Expired)]);
    // b keeps it: a's claims find it held
    assert_eq!(a.tick().unwrap(), Changes::default());
    assert_eq!(rows(&pg)["m00"].0.as_deref(), Some(b_id.as_str()));
}

fn fence(client: &mut impl postgres::GenericClient, f: &lease::Fences, mailbox: &str) -> u64 {
    let (worker, token) = f.get(mailbox).unwrap_or((f.worker().to_owned(), -1));
    client
        .execute(FENCE_SQL, &[&mailbox, &worker, &token])
        .unwrap()
}

#[test]
fn the_fence_refuses_a_worker_that_lost_its_lease_and_a_takeover_waits_for_a_commit() {
    let pg = with_schema();
    let mbs = names(1);
    let a = holder_of_m00(&pg);
    let a_fences = a.fences();
    let (a_worker, a_token) = a_fences.get("m00").unwrap();
    let mut a_store = connect(pg.port());
    assert_eq!(fence(&mut a_store, &a_fences, "m00"), 1);

    // a's store opens a message transaction and fences it; the lease expires meanwhile
    let mut tx = a_store.transaction().unwrap();
    assert_eq!(fence(&mut tx, &a_fences, "m00"), 1);
    std::thread::sleep(Duration::from_millis(1700));
    // b's tick skips the row locked by the commit in flight
    let mut b = Leases::new(
        connect(pg.port()),
        WorkerInfo::this_process(Role::Watch),
        Duration::from_millis(1500),
        mbs,
    );
    b.tick().unwrap();
    assert_eq!(b.tick().unwrap(), Changes::default());
    // a cron pass's claim waits for the commit
    let url_port = pg.port();
    let (claiming_tx, claiming) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let client = connect(url_port);
        let mut s = Leases::new(
            client,
            WorkerInfo::this_process(Role::Sync),
            Duration::from_millis(4000),
            vec!["m00".to_owned()],
        );
        claiming_tx.send(()).unwrap();
        let t0 = Instant::now();
        let claim = s.claim_for_pass("m00").unwrap();
        (claim, t0.elapsed(), s)
    });
    claiming.recv().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(!waiting.is_finished(), "the takeover did not wait");
    tx.commit().unwrap();
    let (claim, waited, _s) = waiting.join().unwrap();
    assert_eq!(claim, Claim::Held(a_token + 1));
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    // a's fence, with the worker id and token it held, now updates nothing
    let refused = a_store
        .execute(FENCE_SQL, &[&"m00", &a_worker, &a_token])
        .unwrap();
    assert_eq!(refused, 0);
    assert_eq!(a_fences.get("m00"), None);
}

/// A `watch` worker configured for `m00` only, holding it.
fn watcher_of_m00(pg: &Postgres, lease_ms: u64) -> Leases {
    let mut w = leases(pg, lease_ms, &names(1));
    w.tick().unwrap();
    w.tick().unwrap();
    assert!(w.fences().get("m00").is_some());
    w
}

#[test]
fn a_cron_pass_skips_a_mailbox_a_live_worker_holds() {
    let pg = with_schema();
    let mbs = names(2);
    let w = watcher_of_m00(&pg, 5000);
    let mut s = Leases::new(
        connect(pg.port()),
        WorkerInfo::this_process(Role::Sync),
        Duration::from_millis(5000),
        mbs,
    );
    match s.claim_for_pass("m00").unwrap() {
        Claim::Busy { owner, expires_in } => {
            assert_eq!(owner, w.worker().id);
            assert!(expires_in > Duration::from_secs(3), "{expires_in:?}");
        }
        held => panic!("{held:?}"),
    }
    assert_eq!(s.claim_for_pass("m01").unwrap(), Claim::Held(1));
    // a cron pass is no watch worker: not counted for the fair share
    let report = lease::report(&mut connect(pg.port()), Duration::from_secs(5)).unwrap();
    assert_eq!(report.workers.len(), 1);
    assert_eq!(report.workers[0].mailboxes, vec!["m00".to_owned()]);
    assert_eq!(
        report
            .mailboxes
            .iter()
            .map(|m| (m.mailbox.as_str(), m.owner.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("m00", Some(w.worker().id.as_str())),
            ("m01", Some(s.worker().id.as_str()))
        ]
    );
    s.release_all().unwrap();
    assert_eq!(rows(&pg)["m01"].0, None);
}

#[test]
fn the_lease_thread_drops_its_leases_while_the_database_is_down_and_takes_them_back() {
    let pg = with_schema();
    let mbs = names(2);
    let connect = connector(&pg);
    let l = leases(&pg, 2000, &mbs);
    let fences = l.fences();
    let (thread, mut rx) = lease::spawn(l, connect).unwrap();
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Change>| {
        let t0 = Instant::now();
        loop {
            if let Ok(c) = rx.try_recv() {
                return (c, t0.elapsed());
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no change");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut got = [next(&mut rx).0, next(&mut rx).0];
    got.sort_by_key(|c| format!("{c:?}"));
    assert!(matches!(&got[0], Change::Acquired { mailbox, token: 1 } if mailbox == "m00"));
    assert!(fences.get("m00").is_some());
    pg.stop_server();
    let (c1, after) = next(&mut rx);
    let (c2, _) = next(&mut rx);
    for c in [&c1, &c2] {
        assert!(
            matches!(
                c,
                Change::Lost {
                    why: LostWhy::Expired,
                    ..
                }
            ),
            "{c:?}"
        );
    }
    assert!(after < Duration::from_millis(2100), "{after:?}");
    assert_eq!(fences.get("m00"), None);
    // back: the thread reconnects and claims them again, with new tokens
    pg.start_server();
    let (c, _) = next(&mut rx);
    assert!(matches!(c, Change::Acquired { token: 2, .. }), "{c:?}");
    thread.stop();
    assert!(rows(&pg).values().all(|(o, _, _)| o.is_none()));
}

#[test]
fn workers_on_a_sqlite_store_says_leases_need_postgresql() {
    let wd = crate::harness::Workdir::new();
    wd.write_config(&[]);
    let r = wd.mailticket(&["workers"]).code(2);
    r.stderr_mentions(&["only with a PostgreSQL store", "[store] url"]);
    assert!(r.stdout.is_empty(), "{r:?}");
}

fn connector(pg: &Postgres) -> lease::Connect {
    let port = pg.port();
    Box::new(move || {
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={port} user=mailticket password={} dbname=mailticket connect_timeout=2",
                Postgres::PASSWORD
            ),
            postgres::NoTls,
        )
        .map_err(|e| mailticket::Error::Network {
            host: "PostgreSQL".into(),
            message: e.to_string(),
        })
    })
}

#[test]
fn a_cron_pass_keeps_its_leases_past_the_lease_time_and_releases_them_at_its_end() {
    let pg = with_schema();
    let mbs = names(2);
    let w = watcher_of_m00(&pg, 20_000);
    let pass = lease::claim_pass(connector(&pg), Duration::from_millis(1200), &mbs).unwrap();
    assert_eq!(pass.busy.len(), 1);
    assert_eq!(pass.busy[0].0, "m00");
    assert_eq!(pass.busy[0].1, w.worker().id);
    assert!(!pass.holds("m00") && pass.holds("m01"));
    let (pass_worker, token) = pass.fences.get("m01").unwrap();
    // renewed by its thread: still held well past one lease
    std::thread::sleep(Duration::from_millis(2500));
    assert!(pass.holds("m01"));
    assert_eq!(rows(&pg)["m01"], (Some(pass_worker), token, 0));
    pass.finish();
    assert_eq!(rows(&pg)["m01"].0, None);
}

#[test]
fn doctor_warns_of_a_mailbox_nobody_holds_and_of_one_taken_over_often() {
    use mailticket::doctor::{Report, Status, check_leases};
    let pg = with_schema();
    let mbs = names(2);
    let mut client = connect(pg.port());
    let lease = Duration::from_secs(20);
    // no worker yet: a warning that nothing is watched, nothing per mailbox
    let mut r = Report::default();
    check_leases(&mut r, &mut client, lease, &mbs);
    assert_eq!(r.steps.len(), 1, "{:?}", r.steps);
    assert_eq!(r.steps[0].status, Status::Warn);
    // a worker configured for m00 only: m01 has no holder
    let _w = watcher_of_m00(&pg, 20_000);
    client
        .execute(
            "UPDATE mailbox_lease SET takeovers = 7 WHERE mailbox = 'm00'",
            &[],
        )
        .unwrap();
    let mut r = Report::default();
    check_leases(&mut r, &mut client, lease, &mbs);
    let seen: Vec<(&str, Status)> = r
        .steps
        .iter()
        .map(|s| (s.scope.as_str(), s.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("leases", Status::Ok),
            ("mailbox m00", Status::Warn),
            ("mailbox m01", Status::Warn)
        ],
        "{:?}",
        r.steps
    );
    assert!(r.steps[0].detail.contains("1 live watch worker(s); 1 of 2"));
    assert!(r.steps[1].detail.contains("taken over 7 times"));
    assert!(r.steps[2].detail.contains("no live worker holds"));
    // without the tables: a failed step naming the cause
    client.batch_execute("DROP TABLE worker").unwrap();
    let mut r = Report::default();
    check_leases(&mut r, &mut client, lease, &mbs);
    assert_eq!(r.steps[0].status, Status::Fail);
}

/// Waits up to 20 s for `cond`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_leased_watch_runs_a_mailbox_only_while_its_lease_is_held() {
    use crate::harness::{Dovecot, Workdir, simple_mail};
    use mailticket::watch::Leased;
    let dc = Dovecot::start();
    dc.seed_user("alice", 2, 0, 3);
    dc.seed_user("bob", 2, 0, 4);
    let wd = Workdir::with(&[dc.mailbox_of("alice"), dc.mailbox_of("bob")]);
    let config = mailticket::config::Config::load(&wd.config()).unwrap();
    let chosen: Vec<_> = config.mailboxes.iter().collect();
    let tokens = mailticket::oauth2::Tokens::new(
        &config,
        &mailticket::store::Location::File(wd.db()),
        &chosen,
        true,
    )
    .unwrap();
    let mailboxes = mailticket::sync::with_credentials(&chosen, &tokens)
        .unwrap()
        .into_iter()
        .map(|(mb, creds)| (mb.clone(), creds))
        .collect();
    let store = mailticket::store::Store::open(&wd.db()).unwrap();
    let (handle, join) = mailticket::store::StoreThread::spawn(store).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let acquired = |m: &str, token| Change::Acquired {
        mailbox: m.to_owned(),
        token,
    };
    let lost = |m: &str, token| Change::Lost {
        mailbox: m.to_owned(),
        token,
        why: LostWhy::Released,
    };
    let driver = {
        let dc = &dc;
        move || {
            tx.send(acquired("alice", 1)).unwrap();
            wait_for("alice ingested", || dc.unseen_of("alice", "INBOX") == 0);
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(dc.unseen_of("bob", "INBOX"), 2, "bob is not ours yet");
            tx.send(lost("alice", 1)).unwrap();
            tx.send(acquired("bob", 1)).unwrap();
            wait_for("bob ingested", || dc.unseen_of("bob", "INBOX") == 0);
            let mail = simple_mail("C <c@customer.example>", "late@c.example", "Late", "");
            dc.append_to("alice", "INBOX", &mail);
            // a Lost for an older lease of bob's does not stop the session of the newer one
            tx.send(lost("bob", 0)).unwrap();
            let mail = simple_mail("D <d@customer.example>", "new@d.example", "New", "");
            dc.append_to("bob", "INBOX", &mail);
            wait_for("bob's new mail ingested", || {
                dc.unseen_of("bob", "INBOX") == 0
            });
            assert_eq!(dc.unseen_of("alice", "INBOX"), 1, "alice is no longer ours");
        }
    };
    let watch = async {
        let leased = Leased {
            fences: lease::Fences::new("test"),
            changes: &mut rx,
        };
        let watching = mailticket::watch::run(
            &config,
            mailboxes,
            &handle,
            None,
            Vec::new(),
            stop.clone(),
            Some(leased),
        );
        watching.await.unwrap()
    };
    let (stopped, driven) = std::thread::scope(|s| {
        let driving = s.spawn(|| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(driver));
            stop.cancel();
            r
        });
        (rt.block_on(watch), driving.join().unwrap())
    });
    if let Err(panic) = driven {
        std::panic::resume_unwind(panic);
    }
    assert!(stopped.clean);
    drop(handle);
    join.join().unwrap().finish().unwrap();
}

#[test]
fn workers_lists_the_live_workers_and_every_lease() {
    let pg = with_schema();
    let w = watcher_of_m00(&pg, 20_000);
    let wd = crate::harness::Workdir::on_store(pg.store_toml());
    wd.write_config(&[]);
    let v = wd.mailticket(&["workers", "--json"]).success().json();
    assert_eq!(v["workers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["workers"][0]["id"], w.worker().id.as_str());
    assert_eq!(v["workers"][0]["mailboxes"], serde_json::json!(["m00"]));
    assert_eq!(v["mailboxes"][0]["mailbox"], "m00");
    assert_eq!(v["mailboxes"][0]["owner"], w.worker().id.as_str());
    assert_eq!(v["mailboxes"][0]["token"], 1);
    let expires = v["mailboxes"][0]["expires_in_ms"].as_i64().unwrap();
    assert!((10_000..=20_000).contains(&expires), "{v}");
    let text = wd.mailticket(&["workers"]).success().stdout;
    assert!(
        text.contains(&w.worker().id) && text.contains("1 (m00)"),
        "{text}"
    );
}

#[test]
fn doctor_on_a_postgresql_store_reports_lease_health() {
    let pg = with_schema();
    let dc = crate::harness::Dovecot::start();
    let _w = watcher_of_m00(&pg, 20_000);
    let wd = crate::harness::Workdir::on_store(pg.store_toml());
    wd.write_config(&[dc.mailbox()]);
    let v = wd.mailticket(&["doctor", "--json"]).json();
    let steps = v["steps"].as_array().unwrap();
    let find = |scope: &str, step: &str| {
        steps
            .iter()
            .find(|s| s["scope"] == scope && s["step"] == step)
            .unwrap_or_else(|| panic!("no {scope} {step}: {v}"))
    };
    assert_eq!(find("store", "connect")["status"], "ok", "{v}");
    let workers = find("leases", "workers");
    assert_eq!(workers["status"], "ok", "{v}");
    assert!(
        workers["detail"]
            .as_str()
            .unwrap()
            .contains("1 live watch worker(s); 0 of 1"),
        "{v}"
    );
    // the configured mailbox "support" has no holder while a worker runs
    assert_eq!(find("mailbox support", "lease")["status"], "warn", "{v}");
}

/// `workers --json` of `wd`: worker id -> mailboxes held (none before a worker made the
/// store).
pub(crate) fn holders(wd: &crate::harness::Workdir) -> HashMap<String, Vec<String>> {
    let run = wd.mailticket(&["workers", "--json"]);
    if run.stderr.contains("no lease tables yet") {
        return HashMap::new();
    }
    let v = run.success().json();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let held = w["mailboxes"].as_array().unwrap();
            let held = held.iter().map(|m| m.as_str().unwrap().to_owned());
            (w["id"].as_str().unwrap().to_owned(), held.collect())
        })
        .collect()
}

#[test]
fn two_watch_workers_share_the_mailboxes_and_one_takes_over_when_the_other_is_killed() {
    use crate::harness::{Dovecot, Workdir, simple_mail, wait_until};
    let users = ["support", "alice", "bob", "carol"];
    let dc = Dovecot::start_with(&[(
        "IMAP_USERS",
        "support:support-pass alice:alice-pass bob:bob-pass carol:carol-pass",
    )]);
    for (i, u) in users.iter().enumerate() {
        dc.seed_user(u, 1, 0, 40 + i as u32);
    }
    let pg = Postgres::start();
    let mbs: Vec<_> = users.iter().map(|u| dc.mailbox_of(u)).collect();
    let workdir = || {
        let wd = Workdir::on_store(format!("{}lease = 3\n", pg.store_toml()));
        wd.write_config_with(&mbs, "[watch]\nidle = true\n");
        wd
    };
    let (wd1, wd2) = (workdir(), workdir());
    let mut w1 = wd1.watch(&[]);
    let mut w2 = wd2.watch(&[]);
    wait_until(Duration::from_secs(30), "the backlog", || {
        wd1.ticket_count() == 4
    });
    wait_until(Duration::from_secs(30), "two mailboxes each", || {
        let h = holders(&wd1);
        h.len() == 2 && h.values().all(|m| m.len() == 2)
    });
    // kill -9 one worker: the other takes its mailboxes over within the lease (3 s) and a tick
    w1.signal("KILL");
    w1.wait_exit(Duration::from_secs(5));
    let t0 = Instant::now();
    for (i, u) in users.iter().enumerate() {
        let mail = simple_mail(
            "Anna <anna@customer.example>",
            &format!("after-kill-{i}@customer.example"),
            &format!("After the kill {i}"),
            "",
        );
        dc.append_to(u, "INBOX", &mail);
    }
    wait_until(Duration::from_secs(30), "one worker holding all", || {
        let h = holders(&wd2);
        h.len() == 1 && h.values().all(|m| m.len() == 4)
    });
    let takeover = t0.elapsed();
    eprintln!("takeover after kill -9: {takeover:?}");
    assert!(takeover < Duration::from_secs(15), "{takeover:?}");
    wait_until(
        Duration::from_secs(30),
        "the mail sent after the kill",
        || wd2.ticket_count() == 8,
    );
    assert!(
        w2.count("acquired the lease of mailbox") >= 4,
        "{}",
        w2.log()
    );
    let v = wd2.mailticket(&["workers", "--json"]).success().json();
    let takeovers: i64 = v["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["takeovers"].as_i64().unwrap())
        .sum();
    assert_eq!(takeovers, 2, "{v}");
    w2.stop(Duration::from_secs(20));
    assert_eq!(wd2.ticket_count(), 8, "every message exactly one ticket");
    // a clean stop releases every lease and leaves no live worker
    assert!(holders(&wd2).is_empty());
    let v = wd2.mailticket(&["workers", "--json"]).success().json();
    assert!(
        v["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["owner"].is_null()),
        "{v}"
    );
}

#[test]
fn sync_on_a_shared_store_skips_a_mailbox_a_watch_worker_holds() {
    use crate::harness::{Dovecot, Workdir};
    let dc = Dovecot::start();
    dc.seed_user("support", 1, 0, 51);
    dc.seed_user("alice", 1, 0, 52);
    let pg = with_schema();
    let mut w = leases(&pg, 20_000, &["support".to_owned()]);
    w.tick().unwrap();
    assert_eq!(w.tick().unwrap().acquired.len(), 1);
    let wd = Workdir::on_store(pg.store_toml());
    wd.write_config(&[dc.mailbox_of("support"), dc.mailbox_of("alice")]);
    let v = wd.sync();
    assert_eq!(v["created"], 1, "{v}");
    assert_eq!(v["skipped"][0]["name"], "support", "{v}");
    assert_eq!(v["skipped"][0]["held_by"], w.worker().id.as_str(), "{v}");
    assert_eq!(v["mailboxes"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(dc.unseen_of("support", "INBOX"), 1, "left to the worker");
    assert_eq!(dc.unseen_of("alice", "INBOX"), 0);
    // the pass released alice's lease; the worker keeps support
    let db = rows(&pg);
    assert_eq!(db["alice"].0, None);
    assert_eq!(db["support"].0.as_deref(), Some(w.worker().id.as_str()));
    let text = wd.mailticket(&["sync"]).success().stdout;
    assert!(
        text.contains(&format!(
            "skipped: worker {} holds its lease",
            w.worker().id
        )),
        "{text}"
    );
}

#[test]
fn a_worker_paused_past_its_lease_commits_nothing_and_says_it_lost_the_lease() {
    use crate::harness::{simple_mail, wait_until};
    let (dc, pg) = (Dovecot::start(), Postgres::start());
    let (wd1, wd2, w1, mut w2) = two_watch_workers(&dc, &pg, |_| true);
    w1.signal("STOP");
    let mail = |i: usize| {
        simple_mail(
            "Anna <anna@customer.example>",
            &format!("paused-{i}@customer.example"),
            &format!("While paused {i}"),
            "",
        )
    };
    for i in 0..3 {
        dc.append_to("alice", "INBOX", &mail(i));
        dc.append_to("bob", "INBOX", &mail(10 + i));
    }
    // w2 takes w1's mailbox over and ingests everything
    wait_until(Duration::from_secs(30), "w2 ingesting all", || {
        wd2.ticket_count() == 6
    });
    resume_and_commit_nothing_twice(&w1, &wd1, &wd2, 6);
    for i in 0..2 {
        dc.append_to("alice", "INBOX", &mail(20 + i));
        dc.append_to("bob", "INBOX", &mail(30 + i));
    }
    wait_until(Duration::from_secs(30), "mail after the pause", || {
        wd2.ticket_count() == 10
    });
    w2.stop(Duration::from_secs(20));
    drop(w1);
}

/// Two `watch` workers (3 s leases, IDLE) on `alice` and `bob`, once they hold one mailbox
/// each and `ready` says so too.
fn two_watch_workers(
    dc: &Dovecot,
    pg: &Postgres,
    ready: impl Fn(&Postgres) -> bool,
) -> (Workdir, Workdir, Watcher, Watcher) {
    let mbs = [dc.mailbox_of("alice"), dc.mailbox_of("bob")];
    let workdir = || {
        let wd = Workdir::on_store(format!("{}lease = 3\n", pg.store_toml()));
        wd.write_config_with(&mbs, "[watch]\nidle = true\n");
        wd
    };
    let (wd1, wd2) = (workdir(), workdir());
    let (w1, w2) = (wd1.watch(&[]), wd2.watch(&[]));
    crate::harness::wait_until(Duration::from_secs(30), "one mailbox each", || {
        let h = holders(&wd1);
        h.len() == 2 && h.values().all(|m| m.len() == 1) && ready(pg)
    });
    (wd1, wd2, w1, w2)
}

/// Resumes the stopped `w1`: it says it lost its lease, comes back as a worker with its share
/// of the mailboxes, and commits nothing that `wd2`'s worker has (`tickets` of them).
fn resume_and_commit_nothing_twice(w1: &Watcher, wd1: &Workdir, wd2: &Workdir, tickets: usize) {
    let created_before = w1.count("created");
    w1.signal("CONT");
    w1.wait_log("lost the lease of mailbox", 1, Duration::from_secs(15));
    crate::harness::wait_until(Duration::from_secs(30), "one mailbox each again", || {
        let h = holders(wd1);
        h.len() == 2 && h.values().all(|m| m.len() == 1)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w1.count("created"), created_before, "{}", w1.log());
    assert_eq!(wd2.ticket_count(), tickets, "nothing stored twice");
}

/// A worker stopped in the middle of a commit holds its lease row locked (the fence) in a
/// transaction that never ends; the server ends that session after three leases, and the
/// other worker takes the mailbox over instead of passing the locked row over for ever.
#[test]
fn a_worker_paused_inside_a_commit_keeps_its_mailbox_no_longer_than_three_leases() {
    use crate::harness::{simple_mail, wait_until};
    let (dc, pg) = (Dovecot::start(), Postgres::start());
    let (wd1, wd2, w1, mut w2) =
        two_watch_workers(&dc, &pg, |pg| pg.psql("SELECT count(*) FROM cursor") == "2");
    // Both workers' next commits wait on the cursor rows, each holding its lease row.
    let count = |sql: &str| pg.psql(sql).parse::<usize>().unwrap();
    let mut locker = pg.psql_spawn("BEGIN; SELECT 1 FROM cursor FOR UPDATE; SELECT pg_sleep(600)");
    let locker_sql =
        "FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()";
    wait_until(Duration::from_secs(20), "the cursor rows locked", || {
        count(&format!(
            "SELECT count(*) {locker_sql} AND wait_event = 'PgSleep'"
        )) == 1
    });
    for (user, i) in [("alice", 1), ("bob", 2)] {
        let id = format!("inside-{i}@customer.example");
        let m = simple_mail(
            "Anna <anna@customer.example>",
            &id,
            "Paused in a commit",
            "",
        );
        dc.append_to(user, "INBOX", &m);
    }
    let stuck = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mailticket'";
    wait_until(Duration::from_secs(30), "both commits waiting", || {
        count(&format!("{stuck} AND wait_event_type = 'Lock'")) == 2
    });
    w1.signal("STOP");
    pg.psql(&format!("SELECT pg_terminate_backend(pid) {locker_sql}"));
    let _ = locker.wait();
    // w1's commit goes on as far as the server can take it, then waits for w1: open.
    wait_until(
        Duration::from_secs(10),
        "w1's transaction left open",
        || count(&format!("{stuck} AND state = 'idle in transaction'")) == 1,
    );
    let paused = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "w2 taking w1's mailbox over",
        || wd2.ticket_count() == 2,
    );
    let waited = paused.elapsed();
    resume_and_commit_nothing_twice(&w1, &wd1, &wd2, 2);
    eprintln!("taken over {waited:?} after the pause");
    w2.stop(Duration::from_secs(20));
    drop(w1);
}

#[test]
fn a_reload_that_drops_a_mailbox_releases_its_lease() {
    use crate::harness::{Dovecot, Workdir, wait_until};
    let dc = Dovecot::start();
    let pg = Postgres::start();
    let wd = Workdir::on_store(format!("{}lease = 3\n", pg.store_toml()));
    wd.write_config(&[dc.mailbox_of("alice"), dc.mailbox_of("bob")]);
    let mut w = wd.watch(&[]);
    wait_until(Duration::from_secs(30), "both mailboxes held", || {
        holders(&wd).values().any(|m| m.len() == 2)
    });
    wd.write_config(&[dc.mailbox_of("alice")]);
    w.signal("HUP");
    w.wait_log("config reloaded", 1, Duration::from_secs(20));
    w.wait_log(
        "released the lease of mailbox bob",
        1,
        Duration::from_secs(20),
    );
    let h = holders(&wd);
    assert_eq!(
        h.values().next().unwrap(),
        &vec!["alice".to_owned()],
        "{h:?}"
    );
    assert_eq!(rows_of(&pg)["bob"], None);
    w.stop(Duration::from_secs(20));
}

/// `mailbox -> owner` as the database has it, read with psql.
fn rows_of(pg: &Postgres) -> HashMap<String, Option<String>> {
    pg.psql("SELECT mailbox, coalesce(owner, '') FROM mailbox_lease")
        .lines()
        .map(|l| {
            let (m, o) = l.split_once('|').unwrap();
            (m.to_owned(), (!o.is_empty()).then(|| o.to_owned()))
        })
        .collect()
}

/// How many `mailbox_lease` rows this connection has updated and not yet reported to the
/// statistics (PostgreSQL's per-transaction counters: compare two readings).
fn lease_updates(db: &mailticket::store::db::Db) -> i64 {
    db.query_row(
        "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'mailbox_lease'",
        &[],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_transaction_checks_a_mailbox_lease_once_and_the_next_transaction_again() {
    let pg = with_schema();
    let a = holder_of_m00(&pg);
    let mut db = mailticket::store::db::Db::pg(connect(pg.port()));
    db.set_fence(std::sync::Arc::new(a.fences()));
    db.begin().unwrap();
    let before = lease_updates(&db);
    for _ in 0..3 {
        db.fenced("m00").unwrap();
    }
    // The first check's UPDATE holds the lease row locked to the commit: one is enough.
    assert_eq!(lease_updates(&db) - before, 1);
    db.commit().unwrap();
    db.begin().unwrap();
    let before = lease_updates(&db);
    db.fenced("m00").unwrap();
    db.fenced("m00").unwrap();
    assert_eq!(
        lease_updates(&db) - before,
        1,
        "a new transaction checks again"
    );
    db.commit().unwrap();
    // A savepoint rolled back unlocks the row its check locked: the next check runs again.
    db.begin().unwrap();
    let before = lease_updates(&db);
    let undone: mailticket::error::Result<()> = db.savepoint(|d| {
        d.fenced("m00")?;
        Err(mailticket::error::Error::Internal("undone".into()))
    });
    assert!(undone.is_err());
    db.fenced("m00").unwrap();
    db.fenced("m00").unwrap();
    assert_eq!(lease_updates(&db) - before, 2);
    db.commit().unwrap();
}

/// A group commit on PostgreSQL has no savepoint per job: a job that fails half-way on the
/// server (a foreign key it breaks aborts the transaction) loses the group, whose jobs run
/// again one by one; nothing of the failed job is kept, and the job after it is halted.
#[test]
fn a_group_commit_on_postgresql_that_fails_half_way_runs_again_one_by_one() {
    use mailticket::store::{NewTicket, Store, StoreThread, TicketStatus, Tx};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pg = with_schema();
    let store = Store::open_pg(&store_config(&pg)).unwrap();
    let (thread, join) = StoreThread::spawn(store).unwrap();
    fn create(tx: &Tx<'_>, subject: &str) -> mailticket::error::Result<i64> {
        tx.create_ticket(&NewTicket {
            subject,
            status: TicketStatus::Open,
            customer: &mailticket::message::Mailbox::default(),
            mailbox: "m00",
            now: 1,
        })
    }
    fn ticket(s: &mut Store, subject: &str) -> mailticket::error::Result<i64> {
        s.transaction(|tx| create(tx, subject))
    }
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let waiting = thread.submit(move |_| wait.recv());
    let halt = std::sync::Arc::new(AtomicBool::new(false));
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let a = thread.submit_grouped(halt.clone(), 0, move |s: &mut Store| {
        counted.fetch_add(1, Ordering::SeqCst);
        ticket(s, "a")
    });
    let half = thread.submit_grouped(halt.clone(), 0, |s: &mut Store| {
        s.transaction(|tx| {
            let t = create(tx, "half")?;
            tx.add_refs([&"x@example.com".to_owned()], t + 1000)
        })
    });
    let after = thread.submit_grouped(halt, 0, |s: &mut Store| ticket(s, "after"));
    go.send(()).unwrap();
    waiting.blocking_recv().unwrap().unwrap();
    let a = a.blocking_recv().unwrap();
    let half = half.blocking_recv().unwrap();
    let after = after.blocking_recv().unwrap();
    drop(thread);
    let store = join.join().unwrap();
    assert!(matches!(a, Ok(Some(_))), "{a:?}");
    assert!(half.is_err(), "{half:?}");
    assert!(matches!(after, Ok(None)), "halted: {after:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "run in the group, then alone"
    );
    let subjects: Vec<String> = store
        .tickets(None)
        .unwrap()
        .into_iter()
        .map(|t| t.subject)
        .collect();
    assert_eq!(subjects, ["a"]);
}

/// A group commit on PostgreSQL holds its cursor advances back to its commit (a round trip
/// a message less): its own reads see the cursor where it was, the commit moves it to the
/// furthest UID the group reached, a group rolled back moves nothing, and a write outside
/// a group moves it at once. A held advance whose cursor is gone loses the group, whose
/// jobs then run again one by one.
#[test]
fn a_group_commit_on_postgresql_moves_each_cursor_at_its_commit_to_the_furthest_uid() {
    use mailticket::store::{Cursor, ImapPos, Origin, Store};
    let pg = with_schema();
    let mut s = Store::open_pg(&store_config(&pg)).unwrap();
    let at = |uidvalidity: u32, uid: u32| Origin {
        source: "imap:m00/INBOX".into(),
        mailbox: "m00".into(),
        imap: Some(ImapPos {
            mailbox: "m00".into(),
            folder: "INBOX".into(),
            uidvalidity,
            uid,
            cursor_to: uid,
        }),
        graph: None,
    };
    let start = Cursor {
        uidvalidity: 7,
        last_uid: 0,
        backlog_until: 0,
        done_uid: 0,
    };
    s.reset_cursor("m00", "INBOX", start).unwrap();
    let last = |s: &Store| s.cursor("m00", "INBOX").unwrap().unwrap().last_uid;
    let advance = |s: &mut Store, o: &Origin| s.transaction(|tx| tx.advance(o)).unwrap();

    s.begin_group().unwrap();
    for uid in [10, 20, 15] {
        advance(&mut s, &at(7, uid));
    }
    assert_eq!(last(&s), 0, "held back to the commit");
    s.advance_held();
    assert!(!s.group_lost());
    s.end_group().unwrap();
    assert_eq!(last(&s), 20);

    s.begin_group().unwrap();
    advance(&mut s, &at(7, 30));
    s.abandon_group().unwrap();
    assert_eq!(last(&s), 20, "a group rolled back moves nothing");
    advance(&mut s, &at(7, 25));
    assert_eq!(last(&s), 25, "outside a group, at once");

    // No cursor at UIDVALIDITY 8: the group is lost when its advances are made.
    s.begin_group().unwrap();
    advance(&mut s, &at(7, 40));
    advance(&mut s, &at(8, 41));
    s.advance_held();
    assert!(s.group_lost());
    s.abandon_group().unwrap();
    assert_eq!(last(&s), 25);
    // The next group holds nothing of the lost one.
    s.begin_group().unwrap();
    advance(&mut s, &at(7, 26));
    s.end_group().unwrap();
    assert_eq!(last(&s), 26);
}
