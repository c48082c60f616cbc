//! A PostgreSQL store shared by several processes at once: what one machine's file lock
//! used to keep apart must now hold through the database (row claims, advisory locks).

use std::collections::BTreeSet;

use std::time::Duration;

use crate::harness::{Dovecot, Workdir, simple_mail, spawn, wait_until};
use crate::pg_harness::Postgres;
use crate::sink::Sink;

const ACK: &str = "[ack]\nenabled = true\nmax-age = 8640000000\n";

#[test]
fn three_processes_racing_the_outbox_send_each_ack_once() {
    let pg = Postgres::start();
    let dc = Dovecot::start();
    for i in 0..40 {
        let mail = simple_mail(
            &format!("Customer {i} <c{i}@customer.example>"),
            &format!("r{i}@customer.example"),
            &format!("Request {i}"),
            "",
        );
        dc.append("INBOX", &mail, false);
    }
    // The SMTP server is down during the sync: the acknowledgements wait in the outbox.
    let sink = Sink::start();
    sink.stop();
    let wd = Workdir::on_store(pg.store_toml());
    wd.write_config_with(&[dc.mailbox()], &format!("{}\n{ACK}", sink.smtp_toml()));
    wd.mailticket(&["sync"]);
    assert_eq!(wd.tickets().len(), 40);
    // All due now, as if their retry time had come.
    pg.psql("UPDATE outbox SET status = 'pending', next_attempt_at = 0");
    sink.restart();
    let senders: Vec<_> = (0..3)
        .map(|_| spawn(wd.cmd(&["outbox", "--send"])))
        .collect();
    for mut s in senders {
        assert!(s.wait().unwrap().success());
    }
    let acked: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.header("In-Reply-To").expect("an ack has In-Reply-To"))
        .collect();
    let unique: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "an acknowledgement went out twice"
    );
    assert_eq!(acked.len(), 40, "every acknowledgement went out");
    let rows = wd.mailticket(&["outbox", "--json"]).success().json();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "sent"),
        "{rows}"
    );
}

fn request(n: u32) -> Vec<u8> {
    simple_mail(
        &format!("Customer {n} <c{n}@customer.example>"),
        &format!("pgr-{n}@customer.example"),
        &format!("Request {n}"),
        "",
    )
}

#[test]
fn postgres_restarted_during_watch_loses_and_duplicates_nothing() {
    let pg = Postgres::start();
    let dc = Dovecot::start();
    for n in 0..10 {
        dc.append("INBOX", &request(n), false);
    }
    let wd = Workdir::on_store(pg.store_toml());
    wd.write_config_with(
        &[dc.mailbox()],
        "[watch]\npoll-interval = 60\nbackoff-max = 2\nshutdown-timeout = 10\n",
    );
    let mut w = wd.watch(&[]);
    wait_until(Duration::from_secs(30), "the backlog", || {
        wd.ticket_count() == 10
    });
    // An immediate stop cuts every connection; mail arrives while the server is down.
    pg.stop_server();
    for n in 10..15 {
        dc.append("INBOX", &request(n), false);
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.start_server();
    for n in 15..20 {
        dc.append("INBOX", &request(n), false);
    }
    wait_until(
        Duration::from_secs(60),
        "the mail after the restart",
        || wd.ticket_count() == 20,
    );
    w.stop(Duration::from_secs(20));
    let ids = wd.ticketed_message_ids();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 20, "every message once: {ids:?}");
    assert_eq!(ids.len(), 20);
    assert!(w.log().contains("reconnected to PostgreSQL"), "{}", w.log());
}

#[test]
fn doctor_checks_the_postgres_store_and_bad_settings_name_the_host_and_the_cause() {
    let pg = Postgres::start();
    let dc = Dovecot::start();
    let wd = Workdir::on_store(pg.store_toml());
    wd.write_config(&[dc.mailbox()]);
    wd.mailticket(&["sync"]).success();
    let v = wd.mailticket(&["doctor", "--json"]).success().json();
    assert_eq!(v["ok"], true, "{v}");
    let store = crate::doctor::steps_of(&v, "store");
    for step in ["connect", "schema", "outbox"] {
        assert!(
            store.contains(&(step.to_owned(), "ok".to_owned())),
            "{step}: {v}"
        );
    }

    // A wrong password, a certificate nobody vouches for, and no TLS where it is off.
    let url = pg.url();
    let settings = [
        (
            format!(
                "[store]\nurl = \"{url}\"\npassword = \"nope\"\nca-file = \"{}\"\n",
                pg.ca_file().display()
            ),
            "password authentication failed",
        ),
        (
            format!(
                "[store]\nurl = \"{url}\"\npassword = \"{}\"\n",
                pg.password()
            ),
            "certificate",
        ),
    ];
    for (store, cause) in settings {
        let bad = Workdir::on_store(store);
        bad.write_config(&[dc.mailbox()]);
        let run = bad.mailticket(&["tickets"]).code(1);
        run.stderr_mentions(&["127.0.0.1", cause]);
        let v = bad.mailticket(&["doctor", "--json"]).code(1).json();
        let steps = crate::doctor::steps_of(&v, "store");
        assert_eq!(steps, [("connect".to_owned(), "fail".to_owned())], "{v}");
    }
    let plain = Workdir::on_store(format!(
        "[store]\nurl = \"{url}\"\npassword = \"{}\"\ntls = \"disable\"\n",
        pg.password()
    ));
    plain.write_config(&[dc.mailbox()]);
    assert_eq!(plain.tickets().len(), 0);
}

#[test]
fn rotating_refresh_tokens_live_in_the_shared_store() {
    use crate::harness::OAuth2Server;
    let pg = Postgres::start();
    // Access tokens live 4 s: usable for 3 s, so each run after a pause refreshes.
    let o = OAuth2Server::start_with(&[("OAUTH2_ACCESS_TTL", "4")]);
    let dc = Dovecot::start_oauth2(&o);
    let seed = o.refresh_token("support", None, None);
    let mb = crate::oauth2::oauth_mailbox(
        &dc,
        "support",
        "xoauth2",
        &crate::oauth2::delegated(&o, Some(&seed)),
    );
    let wd = Workdir::on_store(pg.store_toml());
    wd.write_raw_config(&format!("{}\n{mb}\n", pg.store_toml()));
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(3200));
        }
        dc.append("INBOX", &request(100 + i), false);
        assert_eq!(wd.sync()["created"], 1, "run {i}");
    }
    let refreshes: Vec<serde_json::Value> = o
        .grants()
        .into_iter()
        .filter(|g| g["grant_type"] == "refresh_token")
        .collect();
    assert_eq!(refreshes.len(), 3, "{refreshes:#?}");
    for w in refreshes.windows(2) {
        assert_eq!(
            w[1]["refresh_token_in"], w[0]["refresh_token_out"],
            "{w:#?}"
        );
    }
    let row = pg.psql("SELECT refreshes, refresh_token FROM oauth2_token");
    let latest = refreshes[2]["refresh_token_out"].as_str().unwrap();
    assert_eq!(
        row,
        format!("3|{latest}"),
        "the latest token is in PostgreSQL"
    );
}

#[test]
fn three_watch_workers_share_thirty_mailboxes_and_a_kill_while_mail_flows_loses_nothing() {
    let users: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    let passwd: Vec<String> = users.iter().map(|u| format!("{u}:{u}-pass")).collect();
    let dc = Dovecot::start_with(&[("IMAP_USERS", &passwd.join(" "))]);
    let pg = Postgres::start();
    let mbs: Vec<_> = users.iter().map(|u| dc.mailbox_of(u)).collect();
    let workdir = || {
        let wd = Workdir::on_store(format!("{}lease = 4\n", pg.store_toml()));
        wd.write_config_with(
            &mbs,
            "[watch]\nidle = true\nbackoff-max = 2\nshutdown-timeout = 10\n",
        );
        wd
    };
    let wds: Vec<Workdir> = (0..3).map(|_| workdir()).collect();
    let mut ws: Vec<_> = wds.iter().map(|wd| wd.watch(&[])).collect();
    let holders = || crate::leases::holders(&wds[0]);
    wait_until(Duration::from_secs(60), "ten mailboxes each", || {
        let h = holders();
        h.len() == 3 && h.values().all(|m| m.len() == 10)
    });
    let all: Vec<String> = holders().into_values().flatten().collect();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        30,
        "every mailbox held by exactly one worker: {all:?}"
    );

    // Mail flows to every mailbox while one worker is killed and its share taken over.
    let mut sent = 0;
    let round = |sent: &mut u32| {
        for u in &users {
            let mail = simple_mail(
                "Anna <anna@customer.example>",
                &format!("flow-{sent}-{u}@customer.example"),
                &format!("Flow {sent}"),
                "",
            );
            dc.append_to(u, "INBOX", &mail);
        }
        *sent += 1;
    };
    round(&mut sent);
    ws[0].signal("KILL");
    ws[0].wait_exit(Duration::from_secs(5));
    let killed = std::time::Instant::now();
    round(&mut sent);
    wait_until(Duration::from_secs(30), "two workers holding all", || {
        let h = crate::leases::holders(&wds[1]);
        h.len() == 2 && h.values().map(Vec::len).sum::<usize>() == 30
    });
    let takeover = killed.elapsed();
    round(&mut sent);
    let want = 30 * sent as usize;
    wait_until(Duration::from_secs(60), "every message ticketed", || {
        wds[1].ticket_count() == want
    });
    eprintln!("takeover of 10 mailboxes after kill -9: {takeover:?} (lease 4 s)");
    assert!(takeover < Duration::from_secs(15), "{takeover:?}");
    for w in ws.iter_mut().skip(1) {
        w.stop(Duration::from_secs(20));
    }
    let ids = wds[1].ticketed_message_ids();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a message was ticketed twice");
    assert_eq!(ids.len(), want, "every message exactly once");
}

#[test]
fn the_same_message_stored_at_once_by_several_processes_is_one_ticket() {
    let pg = Postgres::start();
    let wd = Workdir::on_store(pg.store_toml());
    wd.write_config(&[]);
    wd.mailticket(&["tickets"]).success();
    for round in 0..6 {
        let mail = simple_mail(
            "Anna <anna@customer.example>",
            &format!("race-{round}@customer.example"),
            &format!("Race {round}"),
            "",
        );
        let mut children: Vec<std::process::Child> = (0..8)
            .map(|_| {
                let mut cmd = wd.cmd(&["ingest"]);
                cmd.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                cmd.spawn().unwrap()
            })
            .collect();
        // All at once: each reads its message, then they store it at the same moment.
        for c in &mut children {
            let mut stdin = c.stdin.take().unwrap();
            std::io::Write::write_all(&mut stdin, &mail).unwrap();
        }
        for mut c in children {
            let status = c.wait().unwrap();
            assert!(status.success(), "round {round}: {status}");
        }
    }
    let tickets = wd.tickets();
    assert_eq!(tickets.len(), 6, "{tickets:?}");
    assert!(tickets.iter().all(|t| t["messages"] == 1), "{tickets:?}");
}
