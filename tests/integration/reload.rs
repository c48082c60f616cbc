//! `watch` and SIGHUP: a config that loads replaces the running one (a mailbox added is
//! watched); a broken one is logged with its file and key and the watch goes on with the old
//! one. Under systemd's `Type=notify` the states reach `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::harness::{Dovecot, Workdir, mailticket_cmd, run, simple_mail, wait_until};

const LONG: Duration = Duration::from_secs(30);
const TIMING: &str = "[watch]\npoll-interval = 60\nbackoff-max = 2\nshutdown-timeout = 10\n";

/// Receives datagrams on SOCK into GOT until one is UNTIL; fails after LIMIT.
fn states(sock: &UnixDatagram, got: &mut Vec<String>, until: &str, limit: Duration) {
    let t0 = std::time::Instant::now();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        assert!(t0.elapsed() < limit, "no {until} on NOTIFY_SOCKET: {got:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.last().is_some_and(|s| s == until) {
                return;
            }
        }
    }
}

#[test]
fn sighup_reloads_the_config_and_a_broken_one_keeps_the_old() {
    let dc = Dovecot::start();
    dc.seed_user("alice", 2, 0, 31);
    let wd = Workdir::new();
    wd.write_config_with(&[dc.mailbox()], TIMING);
    let socket_path = wd.path("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let mut w = wd.watch_env(&[], &[("NOTIFY_SOCKET", socket_path.as_os_str())]);
    let mut got = Vec::new();
    states(&sock, &mut got, "READY=1", LONG);
    w.wait_log("connected", 1, LONG);
    assert_eq!(wd.ticket_count(), 0);

    // a second mailbox in the new config is watched after SIGHUP
    wd.write_config_with(&[dc.mailbox(), dc.mailbox_of("alice")], TIMING);
    w.signal("HUP");
    w.wait_log("config reloaded", 1, LONG);
    wait_until(LONG, "alice's tickets", || wd.ticket_count() == 2);
    states(&sock, &mut got, "READY=1", LONG);
    assert_eq!(got, ["READY=1", "RELOADING=1", "READY=1"], "{}", w.log());

    // a broken config: logged with its file and key, the old config stays in force
    let good = std::fs::read_to_string(wd.config()).unwrap();
    wd.write_raw_config(&good.replace("poll-interval", "pol-interval"));
    w.signal("HUP");
    w.wait_log("reload failed", 1, LONG);
    let line = w
        .log()
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap()
        .to_owned();
    assert!(line.contains("pol-interval"), "{line}");
    assert!(line.contains(&*wd.config().to_string_lossy()), "{line}");
    dc.append(
        "INBOX",
        &simple_mail("C <c@example.net>", "after-hup@example.net", "After", ""),
        false,
    );
    // (the config is broken: count with a copy of the good one)
    std::fs::write(wd.path("good.toml"), &good).unwrap();
    wait_until(LONG, "the mail after a failed reload", || {
        let mut cmd = mailticket_cmd(&wd.dir);
        cmd.arg("--config").arg(wd.path("good.toml"));
        cmd.args(["tickets", "--status", "all", "--json"]);
        run(cmd, None).success().json().as_array().unwrap().len() == 3
    });
    assert_eq!(w.count("config reloaded"), 1, "{}", w.log());

    w.stop(Duration::from_secs(10));
    states(&sock, &mut got, "STOPPING=1", LONG);
    assert_eq!(
        got,
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
}
