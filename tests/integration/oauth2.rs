//! OAuth2 end to end: `mailticket` against the local token endpoint (`tests/env/oauth2-server`),
//! a Dovecot that checks its bearer tokens (XOAUTH2 and OAUTHBEARER) and the SMTP sink in
//! OAuth2 mode. Nothing here is mocked: the tokens are the server's signed JWTs.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Dovecot, OAuth2Server, Workdir, quoted, simple_mail, wait_until};
use crate::sink::Sink;

/// A `[[mailbox]]` for USER on DC that logs in with AUTH (`xoauth2` / `oauthbearer`) and the
/// `oauth2` table OAUTH2.
pub(crate) fn oauth_mailbox(dc: &Dovecot, user: &str, auth: &str, oauth2: &str) -> String {
    let mb = dc.mailbox_of(user);
    let toml = mb.toml();
    let password = format!("password = {}\n", mb.password);
    assert!(toml.contains(&password));
    toml.replace(
        &password,
        &format!("auth = {}\noauth2 = {oauth2}\n", quoted(auth)),
    )
}

/// The client-credentials table for O.
fn app_only(o: &OAuth2Server) -> String {
    format!(
        "{{ flow = \"client-credentials\", token-url = {}, client-id = {}, client-secret = {}, \
         scope = {}, timeout = 3 }}",
        quoted(&o.token_url()),
        quoted(OAuth2Server::CLIENT_ID),
        quoted(OAuth2Server::CLIENT_SECRET),
        quoted(OAuth2Server::SCOPE_APP),
    )
}

/// The refresh-token table for O, starting from the refresh token SEED (none: `oauth2 login`).
pub(crate) fn delegated(o: &OAuth2Server, seed: Option<&str>) -> String {
    let seed = seed.map_or(String::new(), |s| {
        format!("refresh-token = {}, ", quoted(s))
    });
    format!(
        "{{ provider = \"microsoft\", tenant = \"testenv\", token-url = {}, device-url = {}, \
         client-id = {}, client-secret = {}, {seed}timeout = 3 }}",
        quoted(&o.token_url()),
        quoted(&o.device_url()),
        quoted(OAuth2Server::CLIENT_ID),
        quoted(OAuth2Server::CLIENT_SECRET),
    )
}

/// A work directory with MAILBOXES (TOML) and EXTRA after them.
fn workdir(mailboxes: &[String], extra: &str) -> Workdir {
    let wd = Workdir::new();
    let mut t = format!("[store]\npath = {}\n", quoted(&wd.db().to_string_lossy()));
    for m in mailboxes {
        t += "\n";
        t += m;
    }
    t += "\n";
    t += extra;
    wd.write_raw_config(&t);
    wd
}

/// `[smtp]` on SINK with AUTH and no password; `oauth2` only when given.
fn smtp_oauth(sink: &Sink, auth: &str, oauth2: Option<&str>) -> String {
    let mut t = sink.smtp_toml().replace(
        "password = \"support-pass\"\n",
        &format!("auth = {}\n", quoted(auth)),
    );
    if let Some(o) = oauth2 {
        t += &format!("oauth2 = {o}\n");
    }
    t + "\n[ack]\nenabled = true\nmax-age = 8640000000\n"
}

/// O (started with ENV), its Dovecot, a refresh token for support, and a work directory whose
/// support mailbox starts from that token, with EXTRA after it.
fn signed_in(env: &[(&str, &str)], extra: &str) -> (OAuth2Server, Dovecot, String, Workdir) {
    let o = OAuth2Server::start_with(env);
    let dc = Dovecot::start_oauth2(&o);
    let seed = o.refresh_token("support", None, None);
    let mb = oauth_mailbox(&dc, "support", "xoauth2", &delegated(&o, Some(&seed)));
    let wd = workdir(&[mb], extra);
    (o, dc, seed, wd)
}

/// Runs `mailticket oauth2 login --mailbox MAILBOX`, approves the code it shows as USER
/// MAILBOX at O, and waits for it to succeed; returns what it printed before and after.
fn device_login(wd: &Workdir, o: &OAuth2Server, mailbox: &str) -> (String, String) {
    let mut child = wd
        .cmd(&["oauth2", "login", "--mailbox", mailbox])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut code = None;
    let mut shown = String::new();
    let mut line = String::new();
    while code.is_none() && out.read_line(&mut line).unwrap() > 0 {
        shown += &line;
        if let Some(rest) = line.trim().strip_prefix("Code: ") {
            code = rest.split_whitespace().next().map(str::to_owned);
        }
        line.clear();
    }
    let code = code.unwrap_or_else(|| panic!("no code in:\n{shown}"));
    o.approve(&code, mailbox);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(status.success(), "{shown}{rest}");
    (shown, rest)
}

fn anna(dc: &Dovecot, id: &str, subject: &str) {
    dc.append(
        "INBOX",
        &simple_mail("Anna <anna@customer.example>", id, subject, ""),
        false,
    );
}

/// The successful grants of one grant type.
fn grants(o: &OAuth2Server, grant_type: &str) -> Vec<Value> {
    o.grants()
        .into_iter()
        .filter(|g| g["endpoint"] == "token" && g["grant_type"] == grant_type && g["ok"] == true)
        .collect()
}

fn errors(summary: &Value) -> String {
    summary["errors"].to_string()
}

#[test]
fn client_credentials_syncs_shared_mailboxes_and_acks_over_smtp() {
    // Microsoft-sized tokens (~2.4 KB)
    let o = OAuth2Server::start_with(&[("OAUTH2_ACCESS_PAD", "1500")]);
    let dc = Dovecot::start_oauth2(&o);
    let sink = Sink::start_oauth2(&o);
    // support with XOAUTH2, alice with OAUTHBEARER; [smtp] shares support's token source
    let wd = workdir(
        &[
            oauth_mailbox(&dc, "support", "xoauth2", &app_only(&o)),
            oauth_mailbox(&dc, "alice", "oauthbearer", &app_only(&o)),
        ],
        &smtp_oauth(&sink, "xoauth2", None),
    );
    anna(&dc, "cc1@customer.example", "VPN down");
    dc.seed_user("alice", 2, 0, 7);
    let s = wd.sync();
    assert_eq!(s["created"], 3, "{s}");
    assert_eq!(s["outbox"]["sent"], 3, "{s}");
    let got = sink.messages();
    assert_eq!(got.len(), 3);
    for m in &got {
        let auth = &m.envelope["auth_oauth2"];
        assert_eq!(auth["mechanism"], "XOAUTH2", "{}", m.envelope);
        assert_eq!(auth["idtyp"], "app");
        assert_eq!(m.envelope["auth_user"], "support");
    }
    // one token for support's IMAP and SMTP, one for alice
    assert_eq!(grants(&o, "client_credentials").len(), 2);

    // the store holds tokens: owner-only
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(wd.db()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "store mode {mode:o}");

    // a second run within the tokens' lifetime asks the endpoint for nothing
    anna(&dc, "cc2@customer.example", "VPN still down");
    let s = wd.sync();
    assert_eq!(s["created"], 1, "{s}");
    assert_eq!(grants(&o, "client_credentials").len(), 2);

    // doctor shows each token's state, and still asks for no new token
    let doc = wd.mailticket(&["doctor", "--json"]).success().json();
    let steps = doc["steps"].as_array().unwrap();
    for scope in ["mailbox support", "mailbox alice", "smtp"] {
        let step = steps
            .iter()
            .find(|s| s["scope"] == scope && s["step"] == "oauth2")
            .unwrap_or_else(|| panic!("no oauth2 step for {scope}: {doc}"));
        let detail = step["detail"].as_str().unwrap();
        assert_eq!(step["status"], "ok", "{step}");
        assert!(
            detail.contains("client-credentials")
                && detail.contains("valid until")
                && detail.contains("IMAP.AccessAsApp"),
            "{detail}"
        );
    }
    assert_eq!(grants(&o, "client_credentials").len(), 2);
}

#[test]
fn a_mailbox_smtp_shares_its_own_token_or_has_its_own_oauth2_table() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let sink = Sink::start_oauth2(&o);
    // [smtp] shares support's token; alice's [mailbox.smtp] logs in as alice with alice's
    // IMAP token; bob's has an oauth2 table of its own.
    let alice = oauth_mailbox(&dc, "alice", "oauthbearer", &app_only(&o))
        + "from = \"Alice <alice@example.com>\"\n\
           [mailbox.smtp]\nusername = \"alice\"\nauth = \"oauthbearer\"\n";
    let bob = oauth_mailbox(&dc, "bob", "xoauth2", &app_only(&o))
        + &format!(
            "[mailbox.smtp]\nusername = \"bob\"\nauth = \"xoauth2\"\noauth2 = {}\n",
            app_only(&o)
        );
    let wd = workdir(
        &[
            oauth_mailbox(&dc, "support", "xoauth2", &app_only(&o)),
            alice,
            bob,
        ],
        &smtp_oauth(&sink, "xoauth2", None),
    );
    anna(&dc, "m1@customer.example", "Support question");
    dc.seed_user("alice", 1, 0, 3);
    dc.seed_user("bob", 1, 0, 4);
    let s = wd.sync();
    assert_eq!(s["outbox"]["sent"], 3, "{s}");
    let mut logins: Vec<(String, String)> = sink
        .messages()
        .iter()
        .map(|m| {
            let e = &m.envelope;
            let mech = e["auth_oauth2"]["mechanism"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (e["auth_user"].as_str().unwrap_or("").to_owned(), mech)
        })
        .collect();
    logins.sort();
    assert_eq!(
        logins,
        [
            ("alice".to_owned(), "OAUTHBEARER".to_owned()),
            ("bob".to_owned(), "XOAUTH2".to_owned()),
            ("support".to_owned(), "XOAUTH2".to_owned()),
        ]
    );
    // one token each for support, alice and bob (IMAP, shared by their SMTP), and one for
    // bob's own SMTP table
    assert_eq!(grants(&o, "client_credentials").len(), 4);
    let st = wd
        .mailticket(&["oauth2", "status", "--json"])
        .success()
        .json();
    let accounts: Vec<&str> = st
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert!(accounts.contains(&"mailbox bob smtp"), "{st}");
    let doc = wd.mailticket(&["doctor", "--json"]).success().json();
    for scope in ["smtp", "mailbox alice smtp", "mailbox bob smtp"] {
        let ok = doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["scope"] == scope && s["step"] == "connect" && s["status"] == "ok");
        assert!(ok, "{scope}: {doc}");
    }
}

#[test]
fn rotated_refresh_tokens_are_kept_across_runs_and_the_old_ones_are_dead() {
    // access tokens live 4 s: usable for 3 s, so each run after a pause refreshes
    let (o, dc, seed, wd) = signed_in(&[("OAUTH2_ACCESS_TTL", "4")], "");
    anna(&dc, "rt0@customer.example", "first");
    assert_eq!(wd.sync()["created"], 1);
    // right away: the stored access token is still good, no refresh
    assert_eq!(wd.sync()["created"], 0);
    assert_eq!(grants(&o, "refresh_token").len(), 1);

    for i in 1..=4 {
        std::thread::sleep(Duration::from_millis(3200));
        anna(&dc, &format!("rt{i}@customer.example"), "again");
        let s = wd.sync();
        assert_eq!(s["created"], 1, "run {i}: {s}");
    }
    let refreshes = grants(&o, "refresh_token");
    assert_eq!(refreshes.len(), 5, "{refreshes:#?}");
    // a chain: each refresh presented the token the previous one returned
    assert_eq!(
        refreshes[0]["refresh_token_in"].as_str(),
        Some(seed.as_str())
    );
    for w in refreshes.windows(2) {
        assert_eq!(
            w[1]["refresh_token_in"], w[0]["refresh_token_out"],
            "{w:#?}"
        );
    }
    // every token but the latest is dead at the server
    let mut old: Vec<String> = vec![seed];
    old.extend(
        refreshes[..4]
            .iter()
            .map(|g| g["refresh_token_out"].as_str().unwrap().to_owned()),
    );
    for t in &old {
        let (status, body) = o.post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t),
                ("client_id", OAuth2Server::CLIENT_ID),
                ("client_secret", OAuth2Server::CLIENT_SECRET),
            ],
        );
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
    // and the store holds the latest one, which a new process still uses
    let latest = refreshes[4]["refresh_token_out"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored: String = rusqlite::Connection::open(wd.db())
        .unwrap()
        .query_row(
            "SELECT refresh_token FROM oauth2_token WHERE account = 'mailbox:support'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, latest);
    std::thread::sleep(Duration::from_millis(3200));
    anna(&dc, "rt9@customer.example", "after all that");
    assert_eq!(wd.sync()["created"], 1);
    assert_eq!(grants(&o, "refresh_token").len(), 6);
}

#[test]
fn an_access_token_expiring_mid_watch_is_renewed_on_reconnect() {
    let (o, dc, _seed, wd) = signed_in(
        &[("OAUTH2_ACCESS_TTL", "3")],
        "[watch]\nbackoff-min = 1\nbackoff-max = 2\nshutdown-timeout = 10\n",
    );
    let mut w = wd.watch(&[]);
    anna(&dc, "w1@customer.example", "before expiry");
    wait_until(Duration::from_secs(20), "the first ticket", || {
        wd.ticket_count() == 1
    });
    // the session outlives its token; a reconnect after expiry needs a new one
    std::thread::sleep(Duration::from_secs(4));
    dc.kick("support");
    anna(&dc, "w2@customer.example", "after expiry");
    wait_until(Duration::from_secs(30), "the second ticket", || {
        wd.ticket_count() == 2
    });
    w.stop(Duration::from_secs(10));
    assert!(grants(&o, "refresh_token").len() >= 2, "{:#?}", o.grants());
    assert_eq!(w.count("LOGIN REFUSED"), 0, "{}", w.log());
    assert_eq!(wd.tickets().len(), 2);
}

#[test]
fn a_revoked_refresh_token_stops_only_its_mailbox() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let seed = o.refresh_token("support", None, None);
    let wd = workdir(
        &[
            oauth_mailbox(&dc, "support", "xoauth2", &delegated(&o, Some(&seed))),
            oauth_mailbox(&dc, "alice", "xoauth2", &app_only(&o)),
        ],
        "[watch]\nbackoff-min = 1\nbackoff-max = 2\nshutdown-timeout = 10\n",
    );
    o.revoke(&["user=support"]);
    anna(&dc, "rv1@customer.example", "lost");
    dc.seed_user("alice", 1, 0, 3);

    let run = wd.mailticket(&["sync", "--json"]).code(1);
    let s = run.json();
    let e = errors(&s);
    assert!(
        e.contains("refresh token revoked or expired")
            && e.contains("mailticket oauth2 login --mailbox support"),
        "{s}"
    );
    assert_eq!(s["created"], 1, "alice's mail is still ticketed: {s}");
    let failed = grants(&o, "refresh_token").len();
    let tried = o
        .grants()
        .iter()
        .filter(|g| g["grant_type"] == "refresh_token")
        .count();
    assert_eq!((failed, tried), (0, 1));

    // the dead token is never sent again, and doctor says what to do
    let doc = wd.mailticket(&["doctor", "--json"]).code(1).json();
    let step = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scope"] == "mailbox support" && s["step"] == "oauth2")
        .cloned()
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(step["status"], "fail");
    assert!(
        step["fix"]
            .as_str()
            .unwrap()
            .contains("oauth2 login --mailbox support"),
        "{step}"
    );

    // watch: support waits for a sign-in, alice keeps working
    let mut w = wd.watch(&[]);
    w.wait_log("OAUTH2 SIGN-IN NEEDED", 1, Duration::from_secs(20));
    dc.seed_user("alice", 1, 0, 4);
    wait_until(Duration::from_secs(20), "alice's second ticket", || {
        wd.ticket_count() == 2
    });
    let tried_after = o
        .grants()
        .iter()
        .filter(|g| g["grant_type"] == "refresh_token")
        .count();
    assert_eq!(tried_after, 1, "the dead refresh token was sent again");

    // a sign-in while watch runs: support comes back without a restart
    device_login(&wd, &o, "support");
    wait_until(Duration::from_secs(20), "support's ticket", || {
        wd.ticket_count() == 3
    });
    w.stop(Duration::from_secs(10));
}

#[test]
fn a_failing_or_hanging_token_endpoint_is_a_clear_transient_error() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let wd = workdir(
        &[oauth_mailbox(&dc, "support", "xoauth2", &app_only(&o))],
        "[watch]\nbackoff-min = 1\nbackoff-max = 2\nshutdown-timeout = 10\n",
    );
    anna(&dc, "f1@customer.example", "endpoint trouble");
    let host = format!("127.0.0.1:{}", o.port);

    o.fault("status", "500", None);
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert!(
        errors(&s).contains(&host) && errors(&s).contains("HTTP 500"),
        "{s}"
    );

    o.fault("delay", "10", None);
    let t0 = Instant::now();
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    assert!(errors(&s).contains("timed out"), "{s}");

    o.fault("garbage", "", None);
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert!(errors(&s).contains("not JSON"), "{s}");
    assert_eq!(wd.tickets().len(), 0);

    // watch backs off through three failures, then works
    o.fault("status", "503", Some(3));
    let mut w = wd.watch(&[]);
    wait_until(Duration::from_secs(30), "the ticket", || {
        wd.ticket_count() == 1
    });
    w.stop(Duration::from_secs(10));
    assert!(w.count("reconnecting") >= 3, "{}", w.log());
    assert!(w.log().contains("HTTP 503"), "{}", w.log());
}

#[test]
fn a_token_for_another_user_is_a_clear_authentication_error() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let token_file = o.dir.join("alice.token");
    std::fs::write(&token_file, o.access_token("alice", &[])).unwrap();
    let cmd = format!(
        "{{ token-command = [\"cat\", {}] }}",
        quoted(&token_file.to_string_lossy())
    );
    let wd = workdir(&[oauth_mailbox(&dc, "support", "xoauth2", &cmd)], "");
    let t0 = Instant::now();
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let e = errors(&s);
    assert!(
        e.contains("authentication failed for support")
            && e.contains("XOAUTH2 token was refused")
            && e.contains("status 401"),
        "{s}"
    );

    // the right user's token through the same command works
    std::fs::write(&token_file, o.access_token("support", &[])).unwrap();
    anna(&dc, "u1@customer.example", "right token");
    assert_eq!(wd.sync()["created"], 1);
}

#[test]
fn device_code_login_stores_a_refresh_token_that_sync_uses() {
    let o = OAuth2Server::start_with(&[("OAUTH2_DEVICE_INTERVAL", "1")]);
    let dc = Dovecot::start_oauth2(&o);
    let wd = workdir(
        &[oauth_mailbox(
            &dc,
            "support",
            "xoauth2",
            &delegated(&o, None),
        )],
        "",
    );
    // before the login: a clear error naming the command
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert!(errors(&s).contains("oauth2 login --mailbox support"), "{s}");

    let (shown, rest) = device_login(&wd, &o, "support");
    assert!(
        shown.contains(&format!("127.0.0.1:{}/device", o.port)),
        "{shown}"
    );
    assert!(rest.contains("refresh token stored"), "{rest}");

    anna(&dc, "d1@customer.example", "after sign-in");
    assert_eq!(wd.sync()["created"], 1);
    let st = wd
        .mailticket(&["oauth2", "status", "--json"])
        .success()
        .json();
    assert_eq!(st[0]["has_refresh_token"], true, "{st}");
    assert!(
        st[0]["scope"].as_str().unwrap_or("").contains("IMAP"),
        "{st}"
    );
    // the device grant, then one refresh by sync at most
    assert_eq!(
        grants(&o, "urn:ietf:params:oauth:grant-type:device_code").len(),
        1
    );

    // `oauth2 status` contacts nothing, so it reads no secret: an unset one does not stop it.
    let config = std::fs::read_to_string(wd.config()).unwrap();
    let secret = format!("client-secret = {}", quoted(OAuth2Server::CLIENT_SECRET));
    assert!(config.contains(&secret));
    let unset = "client-secret = { env = \"MAILTICKET_TEST_UNSET_SECRET\" }";
    wd.write_raw_config(&config.replace(&secret, unset));
    let st = wd
        .mailticket(&["oauth2", "status", "--json"])
        .success()
        .json();
    assert_eq!(st[0]["account"], "mailbox support", "{st}");
    assert_eq!(st[0]["has_refresh_token"], true, "{st}");
    assert!(
        st[0]["scope"].as_str().unwrap_or("").contains("IMAP"),
        "{st}"
    );
    let text = wd.mailticket(&["oauth2", "status"]).success();
    assert!(text.stdout.contains("mailbox support"), "{}", text.stdout);
    // ... while a command that needs it names it.
    wd.mailticket(&["sync"])
        .code(2)
        .stderr_mentions(&["MAILTICKET_TEST_UNSET_SECRET"]);
}

#[test]
fn no_token_or_secret_reaches_the_logs_even_at_trace() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let sink = Sink::start_oauth2(&o);
    let seed = o.refresh_token("support", None, None);
    let wd = workdir(
        &[
            oauth_mailbox(&dc, "support", "xoauth2", &delegated(&o, Some(&seed))),
            oauth_mailbox(&dc, "alice", "oauthbearer", &app_only(&o)),
        ],
        &smtp_oauth(&sink, "oauthbearer", Some(&app_only(&o))),
    );
    anna(&dc, "s1@customer.example", "secrets");
    dc.seed_user("alice", 1, 0, 5);
    let mut logs = String::new();
    for args in [
        vec!["-vv", "sync", "--json"],
        vec!["-vv", "doctor"],
        vec!["-vv", "oauth2", "status"],
    ] {
        let mut cmd = wd.cmd(&args);
        cmd.env("MAILTICKET_LOG", "trace");
        let run = crate::harness::run(cmd, None);
        logs += &run.stdout;
        logs += &run.stderr;
    }
    assert!(logs.lines().count() > 50, "trace logging is on: {logs}");
    let sent = sink.messages();
    assert_eq!(sent.len(), 2);
    for m in &sent {
        assert_eq!(
            m.envelope["auth_oauth2"]["mechanism"], "OAUTHBEARER",
            "{}",
            m.envelope
        );
    }

    let conn = rusqlite::Connection::open(wd.db()).unwrap();
    let mut secrets = vec![seed, OAuth2Server::CLIENT_SECRET.to_owned()];
    let mut stmt = conn
        .prepare("SELECT refresh_token, access_token FROM oauth2_token")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (r, a) = row.unwrap();
        secrets.extend(r);
        secrets.extend(a);
    }
    assert!(secrets.len() >= 4, "{} secrets", secrets.len());
    for s in &secrets {
        // the token, and any 24-character stretch of it (base64 in a SASL line has others)
        assert!(!logs.contains(s.as_str()), "a secret is in the logs");
        if s.len() >= 32 {
            let mid = &s[s.len() / 2 - 12..s.len() / 2 + 12];
            assert!(!logs.contains(mid), "part of a secret is in the logs");
        }
    }
    // and no SASL response, base64 or not
    assert!(
        !logs.contains("auth=Bearer"),
        "a SASL response is in the logs"
    );
    assert!(
        !logs.contains("dXNlcj1"),
        "a base64 XOAUTH2 response is in the logs"
    );
}

#[test]
fn a_server_that_cannot_check_tokens_now_is_not_a_refused_login() {
    // Dovecot asks the token server about every token; while that fails it answers
    // NO [UNAVAILABLE]: a transient error, not "authentication failed"
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2_with(&o, &[("IMAP_OAUTH2_MODE", "introspect")]);
    let wd = workdir(
        &[oauth_mailbox(&dc, "support", "xoauth2", &app_only(&o))],
        "",
    );
    anna(&dc, "un1@customer.example", "introspection down");
    o.fault_on("introspect", "status", "500", None);
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    let e = errors(&s);
    assert!(
        e.contains("UNAVAILABLE") && e.contains("could not be checked now"),
        "{s}"
    );
    assert!(!e.contains("authentication failed"), "{s}");
    // not taken for a refused token: no second token was fetched for a retry
    assert_eq!(grants(&o, "client_credentials").len(), 1);
    o.fault_none();
    assert_eq!(wd.sync()["created"], 1);
}

#[test]
fn a_refused_access_token_is_renewed_once_and_the_login_retried() {
    let (o, dc, _seed, wd) = signed_in(&[], "");
    assert_eq!(wd.sync()["created"], 0);
    assert_eq!(grants(&o, "refresh_token").len(), 1);
    // the stored access token goes bad before its time (revoked, re-signed keys, ...)
    let bad = o.access_token("support", &["bad_signature=1"]);
    let changed = rusqlite::Connection::open(wd.db())
        .unwrap()
        .execute(
            "UPDATE oauth2_token SET access_token = ?1, access_expires = unixepoch() + 3000",
            [&bad],
        )
        .unwrap();
    assert_eq!(changed, 1);
    anna(&dc, "rn1@customer.example", "renewed");
    let mut cmd = wd.cmd(&["-v", "sync", "--json"]);
    cmd.env_remove("MAILTICKET_LOG");
    let run = crate::harness::run(cmd, None).code(0);
    assert_eq!(run.json()["created"], 1, "{run:?}");
    assert!(
        run.stderr.contains("refused the access token") && run.stderr.contains("status 401"),
        "{}",
        run.stderr
    );
    assert_eq!(grants(&o, "refresh_token").len(), 2);
}

#[test]
fn the_token_endpoint_certificate_is_verified() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let https = |ca: &str| {
        app_only(&o).replace(
            &format!("token-url = {}", quoted(&o.token_url())),
            &format!("token-url = {}{ca}", quoted(&o.token_url_https())),
        )
    };
    // the server's CA is not trusted: refused, naming the problem
    let wd = workdir(&[oauth_mailbox(&dc, "support", "xoauth2", &https(""))], "");
    let s = wd.mailticket(&["sync", "--json"]).code(1).json();
    assert!(
        errors(&s).contains("UnknownIssuer") && errors(&s).contains("oauth2 ca-file"),
        "{s}"
    );
    assert_eq!(grants(&o, "client_credentials").len(), 0);
    // with its CA as ca-file: fine
    let ca = format!(", ca-file = {}", quoted(&o.ca_file().to_string_lossy()));
    let wd = workdir(&[oauth_mailbox(&dc, "support", "xoauth2", &https(&ca))], "");
    anna(&dc, "tls1@customer.example", "over https");
    assert_eq!(wd.sync()["created"], 1);
    assert_eq!(grants(&o, "client_credentials").len(), 1);
}

#[test]
fn a_refused_smtp_token_is_answered_renewed_and_the_ack_still_sent() {
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let sink = Sink::start_oauth2(&o);
    // the mailbox logs in with its password; [smtp] has its own app-only token
    let wd = workdir(
        &[dc.mailbox().toml()],
        &smtp_oauth(&sink, "xoauth2", Some(&app_only(&o))),
    );
    anna(&dc, "sm1@customer.example", "first");
    assert_eq!(wd.sync()["outbox"]["sent"], 1);
    assert_eq!(grants(&o, "client_credentials").len(), 1);
    // the stored SMTP token goes bad before its time
    let bad = o.access_token("app:connector", &["bad_signature=1"]);
    let changed = rusqlite::Connection::open(wd.db())
        .unwrap()
        .execute(
            "UPDATE oauth2_token SET access_token = ?1 WHERE account = 'smtp'",
            [&bad],
        )
        .unwrap();
    assert_eq!(changed, 1);
    anna(&dc, "sm2@customer.example", "second");
    let mut cmd = wd.cmd(&["-v", "sync", "--json"]);
    cmd.env_remove("MAILTICKET_LOG");
    let run = crate::harness::run(cmd, None).code(0);
    let s = run.json();
    assert_eq!(s["outbox"]["sent"], 1, "{s}\n{}", run.stderr);
    // the sink's JSON challenge was decoded and answered before the 535
    assert!(
        run.stderr.contains("SMTP server refused the access token")
            && run.stderr.contains("status 401")
            && run.stderr.contains("535"),
        "{}",
        run.stderr
    );
    assert_eq!(grants(&o, "client_credentials").len(), 2);
    assert_eq!(sink.messages().len(), 2);
}
