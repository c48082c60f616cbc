//! The harness on its own: proves the test environment before blaming `mailticket`.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Dovecot, Prng, check, mailgen, script, scrub_env};
use crate::pg_harness::Postgres;

#[test]
fn dovecot_starts_seeds_appends_resets_and_stops() {
    let dc = Dovecot::start();
    let dir = dc.dir.clone();
    let port = dc.imaps_port;
    assert!(dc.ca_file().is_file());

    dc.seed(4, 1, 3);
    assert_eq!(dc.count("INBOX"), 5);
    assert_eq!(dc.unseen("INBOX"), 5);
    let msgs = dc.messages("INBOX");
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[0].message_id.split('@').next(), Some("0.3.S"));
    assert_eq!(msgs[4].message_id.split('@').next(), Some("4.3.L"));
    assert!(msgs.iter().all(|m| !m.seen()));

    // mailgen `one` reproduces what `seed` wrote
    let one = String::from_utf8(mailgen::one(4, 3, true)).unwrap();
    assert!(one.contains(&format!("Message-ID: <{}>", msgs[4].message_id)));
    // and `many` reproduces `one`
    let many = mailgen::many(3, 3);
    assert_eq!(many.len(), 3);
    assert_eq!(many[2], mailgen::one(2, 3, false));
    assert!(String::from_utf8_lossy(&many[0]).contains(&msgs[0].message_id));

    dc.append("INBOX", &mailgen::one(9, 3, false), true);
    dc.append("INBOX", &Prng::new(1).bytes(512), false);
    let msgs = dc.messages("INBOX");
    assert_eq!(msgs.len(), 7);
    assert!(msgs[5].seen() && !msgs[6].seen());
    assert_eq!(msgs[6].message_id, "");
    assert_eq!(dc.unseen("INBOX"), 6);

    dc.create_folder("Processed");
    assert_eq!(dc.count("Processed"), 0);

    let before = dc.uidvalidity();
    dc.reset();
    dc.seed(2, 0, 3);
    assert_eq!(dc.count("INBOX"), 2);
    assert_ne!(
        dc.uidvalidity(),
        before,
        "reset must give a new UIDVALIDITY"
    );

    drop(dc);
    assert!(!dir.exists(), "Drop removes the directory");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "Drop stops the server"
    );
}

#[test]
fn prng_is_deterministic() {
    let (mut a, mut b) = (Prng::new(42), Prng::new(42));
    let xs: Vec<u64> = (0..5).map(|_| a.range(20, 400)).collect();
    let ys: Vec<u64> = (0..5).map(|_| b.range(20, 400)).collect();
    assert_eq!(xs, ys);
    assert!(xs.iter().all(|x| (20..=400).contains(x)));
}

/// `psql` as the `mailticket` role over TCP with TLS verified against the cluster's CA
/// (`sslmode=verify-full`), the way mailticket connects.
fn psql_over_tls(pg: &Postgres, password: &str, sql: &str) -> std::process::Output {
    let ssl = format!("sslmode=verify-full sslrootcert={}", pg.ca_file().display());
    psql_tcp(pg, &ssl, password, sql)
}

/// `psql` as the `mailticket` role over TCP with the libpq SSL settings SSL.
fn psql_tcp(pg: &Postgres, ssl: &str, password: &str, sql: &str) -> std::process::Output {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=mailticket user=mailticket {ssl} connect_timeout=10",
        pg.port()
    );
    let mut cmd = Command::new(pg.bin("psql"));
    scrub_env(&mut cmd, &["PG"]);
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &conninfo, "-c", sql])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn postgres_starts_with_tls_and_scram_and_keeps_data_over_a_restart() {
    let t0 = Instant::now();
    let pg = Postgres::start();
    let took = t0.elapsed();
    eprintln!("Postgres::start took {took:?}");
    assert!(took < Duration::from_secs(10), "start took {took:?}");
    let dir = pg.dir.clone();
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://mailticket@127.0.0.1:{port}/mailticket")
    );
    assert!(pg.ca_file().is_file());
    assert_eq!(pg.psql("select current_user"), "postgres");
    assert_eq!(
        pg.psql("select datdba::regrole from pg_database where datname = 'mailticket'"),
        "mailticket"
    );

    let ok = psql_over_tls(
        &pg,
        pg.password(),
        "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(stdout.trim(), "mailticket|t");

    let bad = psql_over_tls(&pg, "wrong-pass", "select 1");
    assert!(!bad.status.success(), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
        "{bad:?}"
    );

    // plain TCP works too (for `tls = "disable"`), SCRAM all the same
    let plain = psql_tcp(
        &pg,
        "sslmode=disable",
        pg.password(),
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "f");
    // another CA does not vouch for the server
    let other = pg.dir.join("other-ca");
    let out = Command::new("bash")
        .arg(script("certs.sh"))
        .arg(&other)
        .output()
        .unwrap();
    check("certs.sh", &out);
    let ssl = format!("sslmode=verify-full sslrootcert={}/ca.crt", other.display());
    let unknown_ca = psql_tcp(&pg, &ssl, pg.password(), "select 1");
    assert!(!unknown_ca.status.success(), "{unknown_ca:?}");
    assert!(
        String::from_utf8_lossy(&unknown_ca.stderr).contains("certificate verify failed"),
        "{unknown_ca:?}"
    );

    let store = pg.store_toml();
    assert!(store.starts_with("[store]\n"), "{store}");
    assert!(
        store.contains(&format!("url = \"{}\"", pg.url())),
        "{store}"
    );
    assert!(store.contains("password = \"mailticket-pass\""), "{store}");
    assert!(store.contains("ca-file = \"/tmp/mtp-"), "{store}");

    pg.psql("create table t (v text); insert into t values ('kept')");
    pg.restart();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("select v from t"), "kept");
    pg.stop_server();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    pg.stop_server(); // idempotent
    pg.start_server();
    assert_eq!(pg.psql("select count(*) from t"), "1");

    drop(pg);
    assert!(!dir.exists(), "Drop removes the directory");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "Drop stops the server"
    );
}

#[test]
fn two_postgres_clusters_run_side_by_side() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Postgres::start);
        let b = s.spawn(Postgres::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir, b.dir);
    a.psql("create table only_in_a (x int)");
    assert_eq!(
        b.psql("select count(*) from pg_tables where tablename = 'only_in_a'"),
        "0"
    );
}
