//! The OAuth2 test environment itself (`tests/env/oauth2-server` + Dovecot in OAuth2 mode + the
//! SMTP sink's OAuth2 mode), checked with real clients: the server's tokens log into IMAP and
//! SMTP with XOAUTH2, its RFC 8628 device authorization grant works over HTTP, and the harness
//! handle (`OAuth2Server`) controls it. The OAuth2 tests of `mailticket` build on this.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::harness::{Dovecot, OAuth2Server, python_code};
use crate::sink::Sink;

/// `A1 AUTHENTICATE XOAUTH2` (SASL-IR, one write) as USER with TOKEN on Dovecot's plain port
/// (loopback counts as secured there); returns the tagged reply. A failure's JSON challenge
/// (`+ eyJ...`) gets the empty response XOAUTH2 wants before the NO.
fn imap_xoauth2(port: u16, user: &str, token: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("* OK"), "IMAP greeting: {line:?}");
    let ir = base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
    writer
        .write_all(format!("A1 AUTHENTICATE XOAUTH2 {ir}\r\n").as_bytes())
        .unwrap();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "IMAP connection closed during AUTHENTICATE");
        if line.starts_with('+') {
            writer.write_all(b"\r\n").unwrap();
        } else if line.starts_with("A1 ") {
            let _ = writer.write_all(b"A2 LOGOUT\r\n");
            return line.trim_end().to_owned();
        }
    }
}

/// Runs `python3 -c CODE ARGS`, which must succeed; returns its stdout, trimmed.
fn python(code: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&python_code(code, args))
        .trim()
        .to_owned()
}

/// client_credentials over HTTPS, trusting only the token server's CA; prints the JSON reply.
const HTTPS_CLIENT_CREDENTIALS: &str = r#"
import ssl, sys, urllib.parse, urllib.request
url, ca, cid, secret, scope = sys.argv[1:6]
form = {"grant_type": "client_credentials", "client_id": cid, "client_secret": secret, "scope": scope}
req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())
with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca), timeout=20) as r:
    print(r.read().decode())
"#;

/// SMTP STARTTLS + AUTH XOAUTH2 as USER with TOKEN; on 235 sends one message. Prints the AUTH
/// reply ("235 ..." or, after answering the 334 JSON challenge, "535 ...").
const SMTP_XOAUTH2: &str = r#"
import base64, smtplib, ssl, sys
port, ca, user, token = sys.argv[1:5]
s = smtplib.SMTP("localhost", int(port), timeout=20)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.ehlo()
ir = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
code, msg = s.docmd("AUTH", "XOAUTH2 " + ir)
if code == 334:
    code, msg = s.docmd("")
if code == 235:
    s.sendmail(f"{user}@example.com", ["customer@example.net"],
               b"Subject: oauth2 env\r\nMessage-ID: <oauth2-env@example.com>\r\n\r\nhello\r\n")
s.quit()
print(code, msg.decode())
"#;

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
}

/// A refresh_token grant of the confidential client over plain HTTP.
fn refresh(o: &OAuth2Server, refresh_token: &str) -> (u16, Value) {
    o.post_form(
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", OAuth2Server::CLIENT_ID),
            ("client_secret", OAuth2Server::CLIENT_SECRET),
        ],
    )
}

/// One device-flow poll of the public client.
fn poll(o: &OAuth2Server, device_code: &str) -> (u16, Value) {
    o.post_form(
        "/token",
        &[
            ("grant_type", OAuth2Server::DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", OAuth2Server::PUBLIC_CLIENT_ID),
        ],
    )
}

/// A poll that must fail with ERROR (RFC 8628 3.5: HTTP 400).
fn poll_error(o: &OAuth2Server, device_code: &str, error: &str) {
    let (status, body) = poll(o, device_code);
    assert_eq!((status, str_of(&body, "error")), (400, error), "{body}");
}

fn count_grants(grants: &[Value], endpoint: &str, grant_type: &str, ok: bool) -> usize {
    grants
        .iter()
        .filter(|g| g["endpoint"] == endpoint && g["grant_type"] == grant_type && g["ok"] == ok)
        .count()
}

#[test]
fn imap_and_smtp_accept_the_token_servers_tokens() {
    let t0 = Instant::now();
    let o = OAuth2Server::start();
    let dc = Dovecot::start_oauth2(&o);
    let sink = Sink::start_oauth2(&o);
    eprintln!("servers up after {:?}", t0.elapsed());

    // delegated: consent (a minted refresh token), then a real refresh_token grant over HTTP
    let rt = o.refresh_token("support", None, Some(OAuth2Server::SCOPE_USER));
    let (status, tok) = refresh(&o, &rt);
    assert_eq!(status, 200, "{tok}");
    let access = str_of(&tok, "access_token");
    assert_ne!(
        str_of(&tok, "refresh_token"),
        rt,
        "the refresh token rotates"
    );
    let reply = imap_xoauth2(dc.imap_port, "support", access);
    assert!(reply.starts_with("A1 OK"), "support's token: {reply}");
    // the same token names support, not alice
    let reply = imap_xoauth2(dc.imap_port, "alice", access);
    assert!(
        reply.starts_with("A1 NO"),
        "support's token as alice: {reply}"
    );

    // app-only: client_credentials over HTTPS (the server's own CA) opens bob's mailbox
    let out = python(
        HTTPS_CLIENT_CREDENTIALS,
        &[
            &o.token_url_https(),
            &o.ca_file().to_string_lossy(),
            OAuth2Server::CLIENT_ID,
            OAuth2Server::CLIENT_SECRET,
            OAuth2Server::SCOPE_APP,
        ],
    );
    let app: Value = serde_json::from_str(&out).unwrap();
    assert!(app.get("refresh_token").is_none(), "{app}");
    let reply = imap_xoauth2(dc.imap_port, "bob", str_of(&app, "access_token"));
    assert!(
        reply.starts_with("A1 OK"),
        "app-only token for bob: {reply}"
    );

    // SMTP: the delegated token has SMTP.Send; an expired minted one is refused
    let (port, ca) = (sink.port.to_string(), sink.ca_file());
    let ca = ca.to_string_lossy();
    let out = python(SMTP_XOAUTH2, &[&port, &ca, "support", access]);
    assert!(out.starts_with("235"), "SMTP AUTH XOAUTH2: {out}");
    let expired = o.access_token("support", &["ttl=-60"]);
    let out = python(SMTP_XOAUTH2, &[&port, &ca, "support", &expired]);
    assert!(
        out.starts_with("535"),
        "SMTP AUTH with an expired token: {out}"
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "one message accepted");
    let auth = &msgs[0].envelope["auth_oauth2"];
    assert_eq!(auth["mechanism"], "XOAUTH2", "{}", msgs[0].envelope);
    assert_eq!(
        auth["client_id"],
        OAuth2Server::CLIENT_ID,
        "{}",
        msgs[0].envelope
    );

    // the grants log saw exactly one refresh and one client_credentials grant
    let grants = o.grants();
    assert_eq!(
        count_grants(&grants, "token", "refresh_token", true),
        1,
        "{grants:?}"
    );
    assert_eq!(
        count_grants(&grants, "token", "client_credentials", true),
        1,
        "{grants:?}"
    );
    eprintln!("took {:?}", t0.elapsed());
}

#[test]
fn device_code_grant_end_to_end() {
    let t0 = Instant::now();
    let o = OAuth2Server::start_with(&[
        ("OAUTH2_DEVICE_INTERVAL", "1"),
        ("OAUTH2_DEVICE_SLOWDOWN", "1"),
    ]);
    let dc = Dovecot::start_oauth2(&o);
    let scope = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access";

    // RFC 8628 3.1/3.2, on the Microsoft-shaped path
    let (status, auth) = o.post_form(
        "/testenv/oauth2/v2.0/devicecode",
        &[
            ("client_id", OAuth2Server::PUBLIC_CLIENT_ID),
            ("scope", scope),
        ],
    );
    assert_eq!(status, 200, "{auth}");
    let device_code = str_of(&auth, "device_code");
    let user_code = str_of(&auth, "user_code");
    let b = user_code.as_bytes();
    assert!(
        b.len() == 9
            && b[4] == b'-'
            && user_code
                .replace('-', "")
                .bytes()
                .all(|c| c.is_ascii_uppercase()),
        "user_code like ABCD-EFGH: {auth}"
    );
    let uri = format!("http://127.0.0.1:{}/device", o.port);
    assert_eq!(str_of(&auth, "verification_uri"), uri, "{auth}");
    assert_eq!(
        str_of(&auth, "verification_uri_complete"),
        format!("{uri}?user_code={user_code}"),
        "{auth}"
    );
    assert_eq!(
        (auth["expires_in"].as_u64(), auth["interval"].as_u64()),
        (Some(600), Some(1)),
        "{auth}"
    );
    // the plain endpoint and the Microsoft-shaped one are the same
    assert!(o.device_url().ends_with("/devicecode"));

    // pending; polled again at once: slow_down (interval 1 -> 2 s); polled after 2 s: pending
    poll_error(&o, device_code, "authorization_pending");
    poll_error(&o, device_code, "slow_down");
    std::thread::sleep(Duration::from_secs(2));
    poll_error(&o, device_code, "authorization_pending");

    // the user approves (the browser step): the next poll gets alice's tokens, once
    o.approve(user_code, "alice");
    let (status, tok) = poll(&o, device_code);
    assert_eq!(status, 200, "{tok}");
    assert_eq!(tok["token_type"], "Bearer", "{tok}");
    assert_eq!(
        tok["scope"], "https://outlook.office.com/IMAP.AccessAsUser.All",
        "{tok}"
    );
    assert_eq!(tok["expires_in"].as_u64(), Some(3600), "{tok}");
    poll_error(&o, device_code, "invalid_grant");
    let reply = imap_xoauth2(dc.imap_port, "alice", str_of(&tok, "access_token"));
    assert!(
        reply.starts_with("A1 OK"),
        "device-flow token for alice: {reply}"
    );

    // its refresh token works with the refresh_token grant (public client) and rotates
    let rt = str_of(&tok, "refresh_token");
    let refresh_public = |t: &str| {
        o.post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t),
                ("client_id", OAuth2Server::PUBLIC_CLIENT_ID),
            ],
        )
    };
    let (status, tok2) = refresh_public(rt);
    assert_eq!(status, 200, "{tok2}");
    assert_ne!(str_of(&tok2, "refresh_token"), rt, "{tok2}");
    let (status, err) = refresh_public(rt);
    assert_eq!(
        (status, str_of(&err, "error")),
        (400, "invalid_grant"),
        "{err}"
    );
    let reply = imap_xoauth2(dc.imap_port, "alice", str_of(&tok2, "access_token"));
    assert!(
        reply.starts_with("A1 OK"),
        "refreshed token for alice: {reply}"
    );

    // a second code, declined: access_denied
    let (status, auth2) = o.post_form(
        "/devicecode",
        &[("client_id", OAuth2Server::PUBLIC_CLIENT_ID)],
    );
    assert_eq!(status, 200, "{auth2}");
    o.deny(str_of(&auth2, "user_code"));
    poll_error(&o, str_of(&auth2, "device_code"), "access_denied");

    let grants = o.grants();
    let g = OAuth2Server::DEVICE_GRANT;
    assert_eq!(
        count_grants(&grants, "devicecode", g, true),
        2,
        "{grants:?}"
    );
    assert_eq!(count_grants(&grants, "token", g, true), 1, "{grants:?}");
    // pending, slow_down, pending, redeemed twice, access_denied
    assert_eq!(count_grants(&grants, "token", g, false), 5, "{grants:?}");
    assert_eq!(
        count_grants(&grants, "admin", "device_approve", true),
        1,
        "{grants:?}"
    );
    assert_eq!(
        count_grants(&grants, "admin", "device_deny", true),
        1,
        "{grants:?}"
    );
    let redeemed = grants
        .iter()
        .find(|r| r["endpoint"] == "token" && r["grant_type"] == g && r["ok"] == true)
        .unwrap();
    assert_eq!(
        (&redeemed["user"], &redeemed["user_code"]),
        (&"alice".into(), &user_code.into())
    );
    eprintln!("took {:?}", t0.elapsed());
}

#[test]
fn the_handle_controls_the_token_server() {
    let t0 = Instant::now();
    let o = OAuth2Server::start_with(&[("OAUTH2_DEVICE_TTL", "1")]);
    let (status, auth) = o.post_form(
        "/devicecode",
        &[("client_id", OAuth2Server::PUBLIC_CLIENT_ID)],
    );
    assert_eq!(
        (status, auth["expires_in"].as_u64()),
        (200, Some(1)),
        "{auth}"
    );
    let issued = Instant::now();
    let client_credentials = [
        ("grant_type", "client_credentials"),
        ("client_id", OAuth2Server::CLIENT_ID),
        ("client_secret", OAuth2Server::CLIENT_SECRET),
        ("scope", OAuth2Server::SCOPE_APP),
    ];

    // revoke: a refresh token of the user's is dead
    let rt = o.refresh_token("bob", None, None);
    o.revoke(&["user=bob"]);
    let (status, err) = refresh(&o, &rt);
    assert_eq!(
        (status, str_of(&err, "error")),
        (400, "invalid_grant"),
        "{err}"
    );

    // faults: one 503, then normal; /devicecode only, until cleared
    o.fault("status", "503", Some(1));
    let (status, err) = o.post_form("/token", &client_credentials);
    assert_eq!(
        (status, str_of(&err, "error")),
        (503, "temporarily_unavailable"),
        "{err}"
    );
    assert_eq!(o.post_form("/token", &client_credentials).0, 200);
    o.fault_on("devicecode", "status", "500", None);
    let device_form = [("client_id", OAuth2Server::PUBLIC_CLIENT_ID)];
    assert_eq!(o.post_form("/devicecode", &device_form).0, 500);
    assert_eq!(o.post_form("/devicecode", &device_form).0, 500);
    assert_eq!(o.post_form("/token", &client_credentials).0, 200);
    o.fault_none();
    assert_eq!(o.post_form("/devicecode", &device_form).0, 200);

    // restart keeps refresh tokens (and device codes, below)
    let rt = o.refresh_token(
        "alice",
        Some(OAuth2Server::PUBLIC_CLIENT_ID),
        Some("https://mail.google.com/ offline_access"),
    );
    o.restart();
    let (status, tok) = o.post_form(
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", OAuth2Server::PUBLIC_CLIENT_ID),
        ],
    );
    assert_eq!(
        (status, &tok["scope"]),
        (200, &"https://mail.google.com/".into()),
        "{tok}"
    );

    // the first device code has expired by now (OAUTH2_DEVICE_TTL=1)
    let left = Duration::from_millis(1100).saturating_sub(issued.elapsed());
    std::thread::sleep(left);
    poll_error(&o, str_of(&auth, "device_code"), "expired_token");

    let grants = o.grants();
    assert_eq!(
        count_grants(&grants, "token", "refresh_token", false),
        1,
        "{grants:?}"
    );
    assert_eq!(
        count_grants(&grants, "token", "refresh_token", true),
        1,
        "{grants:?}"
    );
    let faults: Vec<&Value> = grants
        .iter()
        .filter(|g| g["error"] == "fault_injected")
        .collect();
    assert_eq!(faults.len(), 3, "{grants:?}");
    assert_eq!(o.issuer(), "https://login.testenv.invalid/testenv/v2.0");
    assert!(o.key_file().is_file());
    assert!(o.token_url().ends_with("/token"));
    eprintln!("took {:?} (waited {left:?} for the expiry)", t0.elapsed());
}
