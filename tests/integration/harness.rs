//! Shared test plumbing: a real Dovecot per test, a scratch work directory with a config and a
//! store, and a runner for the built `mailticket` binary.
//!
//! Everything a Dovecot instance needs lives under a short directory in /tmp (mode 755): the mail
//! uid cannot traverse /root, where CI may have cloned the repository. The scripts in
//! `tests/env/` are always run through `bash`, so no exec bits are assumed.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

/// The address of the support mailbox in generated mail.
pub const SUPPORT_ADDR: &str = "support@example.com";
/// How long one `mailticket` run may take before the test kills it and fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn env_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/env")
}

pub fn script(name: &str) -> PathBuf {
    env_dir().join(name)
}

/// A fresh, empty, short directory `/tmp/PREFIX-PID-N` with mode 755.
pub fn unique_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/{prefix}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A loopback port that was free a moment ago and that no other test of this process got.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Panics with WHAT, the status, stdout and stderr unless OUT succeeded; returns its stdout.
pub fn check(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `python3 -c CODE ARGS`, which must succeed; returns its stdout.
pub fn python_code(code: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check("python3 -c", &out);
    out.stdout
}

/// `Message-ID` without its angle brackets.
pub fn bare_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

/// One message as Dovecot reports it.
#[derive(Debug, Clone)]
pub struct ServerMessage {
    pub uid: u32,
    pub flags: Vec<String>,
    /// Without angle brackets; empty when the message has none.
    pub message_id: String,
}

impl ServerMessage {
    pub fn seen(&self) -> bool {
        self.flags.iter().any(|f| f == "\\Seen")
    }
}

/// A private Dovecot (`tests/env/imap-server`) on two free loopback ports. Dropping it stops the
/// server and removes its directory.
pub struct Dovecot {
    pub dir: PathBuf,
    pub imap_port: u16,
    pub imaps_port: u16,
    /// Knobs for tests/env/imap-server (`IMAP_CAPABILITY`, ...), kept across restarts.
    env: Vec<(String, String)>,
}

impl Dovecot {
    pub fn start() -> Dovecot {
        Dovecot::start_with(&[])
    }

    /// Like [`Dovecot::start`], with imap-server knobs such as `("IMAP_AUTH_PENALTY", "0")`.
    pub fn start_with(env: &[(&str, &str)]) -> Dovecot {
        let mut dc = Dovecot {
            dir: unique_dir("mtd"),
            imap_port: 0,
            imaps_port: 0,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for _ in 0..5 {
            dc.imap_port = free_port();
            dc.imaps_port = free_port();
            let (started, err) = dc.run_start();
            if started {
                return dc;
            }
            // Only a port that someone else took in the meantime is worth another try.
            assert!(
                err.contains("already in use"),
                "imap-server start failed:\n{err}"
            );
        }
        panic!("imap-server start: no free ports after 5 tries");
    }

    /// A Dovecot with `IMAP_OAUTH2=1` that accepts O's access tokens in AUTHENTICATE XOAUTH2 and
    /// OAUTHBEARER (local JWT validation with O's key and issuer): user tokens whose `sub` is
    /// the login name (support, alice, bob) and which have `IMAP.AccessAsUser.All`, and app-only
    /// (client_credentials) tokens for all three mailboxes. PLAIN/LOGIN work as before; the
    /// auth penalty is off.
    pub fn start_oauth2(o: &OAuth2Server) -> Dovecot {
        Dovecot::start_oauth2_with(o, &[])
    }

    /// Like [`Dovecot::start_oauth2`], with more knobs, e.g. `("IMAP_OAUTH2_MODE", "introspect")`
    /// (Dovecot then asks O's /introspect about every token) or `("IMAP_OAUTH2_APP_MAILBOXES",
    /// "support")`.
    pub fn start_oauth2_with(o: &OAuth2Server, env: &[(&str, &str)]) -> Dovecot {
        let mut all = o.env();
        all.push(("IMAP_OAUTH2".into(), "1".into()));
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Dovecot::start_with(&refs)
    }

    fn server(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        // IMAP_OAUTH2_* and OAUTH2_* (e.g. from a sourced env file) would change the config
        scrub_env(&mut cmd, &["IMAP_OAUTH2", "OAUTH2_"]);
        cmd.arg(script("imap-server"))
            .arg("-d")
            .arg(&self.dir)
            .args(args)
            .env("IMAP_PORT", self.imap_port.to_string())
            .env("IMAPS_PORT", self.imaps_port.to_string())
            .env_remove("IMAP_TESTENV_DIR")
            .env_remove("IMAP_USERS")
            .env_remove("IMAP_STRICT_ADDR")
            .env_remove("IMAP_OAUTH2")
            .env_remove("IMAP_DEBUG")
            .env_remove("IMAP_CAPABILITY")
            .env_remove("IMAP_AUTH_PENALTY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Stops the server; mail, UIDVALIDITY and flags survive until [`Dovecot::restart`].
    pub fn stop_server(&self) {
        check(
            "imap-server stop",
            &self.server(&["stop"]).output().unwrap(),
        );
    }

    /// `imap-server start`: whether it worked, and what it said.
    fn run_start(&self) -> (bool, String) {
        // The daemon inherits the script's stdout/stderr: a pipe would never see EOF.
        let log = self.dir.join("start.log");
        let file = std::fs::File::create(&log).unwrap();
        let status = self
            .server(&["start"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        (
            status.success(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    /// Starts the server again on the same ports.
    pub fn restart(&self) {
        let (started, err) = self.run_start();
        assert!(started, "imap-server start failed:\n{err}");
    }

    /// Drops every IMAP connection of USER (`doveadm kick`: the client sees `* BYE`).
    pub fn kick(&self, user: &str) {
        check(
            "imap-server kick",
            &self.server(&["kick", user]).output().unwrap(),
        );
    }

    /// PIDs of USER's `imap` processes.
    pub fn pids(&self, user: &str) -> Vec<u32> {
        check(
            "imap-server pids",
            &self.server(&["pids", user]).output().unwrap(),
        )
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
    }

    /// Runs `doveadm ARGS` against this instance and returns its stdout.
    pub fn doveadm(&self, args: &[&str]) -> String {
        let mut full = vec!["doveadm"];
        full.extend_from_slice(args);
        check(
            &format!("doveadm {args:?}"),
            &self.server(&full).output().unwrap(),
        )
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// Writes `small` ~3 KB and `large` ~200 KB generated unseen messages into support/INBOX.
    pub fn seed(&self, small: u32, large: u32, seed: u32) {
        self.seed_user("support", small, large, seed);
    }

    /// Like [`Dovecot::seed`], into USER's INBOX (`support`, `alice` or `bob`).
    pub fn seed_user(&self, user: &str, small: u32, large: u32, seed: u32) {
        let (small, large, seed) = (small.to_string(), large.to_string(), seed.to_string());
        let args = [
            "seed", "--user", user, "--small", &small, "--large", &large, "--seed", &seed,
        ];
        check("imap-server seed", &self.server(&args).output().unwrap());
    }

    /// Delivers one message into the support user's FOLDER, `\Seen` if asked.
    pub fn append(&self, folder: &str, message: &[u8], seen: bool) {
        self.append_to("support", folder, message);
        if seen {
            let uid = self.messages(folder).iter().map(|m| m.uid).max();
            self.add_seen(folder, &uid.unwrap().to_string());
        }
    }

    /// Delivers one unseen message into USER's FOLDER.
    pub fn append_to(&self, user: &str, folder: &str, message: &[u8]) {
        let mut child = self
            .server(&["doveadm", "save", "-u", user, "-m", folder])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        check("doveadm save", &child.wait_with_output().unwrap());
    }

    /// Sets `\Seen` on a UID set of FOLDER (e.g. "1:3").
    pub fn add_seen(&self, folder: &str, uids: &str) {
        let args = [
            "flags", "add", "-u", "support", "\\Seen", "mailbox", folder, "uid", uids,
        ];
        self.doveadm(&args);
    }

    /// Every message of the support user's FOLDER, in UID order.
    pub fn messages(&self, folder: &str) -> Vec<ServerMessage> {
        let out = self.doveadm(&[
            "fetch",
            "-u",
            "support",
            "uid flags hdr.message-id",
            "mailbox",
            folder,
            "all",
        ]);
        // pager format: "field: value" lines, records separated by a form feed line
        out.split('\x0c')
            .filter(|rec| !rec.trim().is_empty())
            .map(|rec| {
                let fields: BTreeMap<&str, &str> = rec
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .collect();
                ServerMessage {
                    uid: fields["uid"].parse().unwrap(),
                    flags: fields["flags"]
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    message_id: bare_id(fields.get("hdr.message-id").unwrap_or(&"")),
                }
            })
            .collect()
    }

    fn status(&self, user: &str, folder: &str, item: &str) -> u64 {
        let out = self.doveadm(&["-f", "flow", "mailbox", "status", "-u", user, item, folder]);
        let key = format!("{item}=");
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {item} in {out:?}"))
            .parse()
            .unwrap()
    }

    /// Number of messages in FOLDER.
    pub fn count(&self, folder: &str) -> u64 {
        self.status("support", folder, "messages")
    }

    /// Number of messages in FOLDER without `\Seen`.
    pub fn unseen(&self, folder: &str) -> u64 {
        self.unseen_of("support", folder)
    }

    /// Number of messages in USER's FOLDER without `\Seen`.
    pub fn unseen_of(&self, user: &str, folder: &str) -> u64 {
        self.status(user, folder, "unseen")
    }

    pub fn uidvalidity(&self) -> u64 {
        self.status("support", "INBOX", "uidvalidity")
    }

    pub fn create_folder(&self, name: &str) {
        self.doveadm(&["mailbox", "create", "-u", "support", name]);
    }

    /// Deletes all of support's mail: the next SELECT sees a new UIDVALIDITY.
    pub fn reset(&self) {
        let old = self.uidvalidity();
        check(
            "imap-server reset",
            &self.server(&["reset", "support"]).output().unwrap(),
        );
        // Dovecot's UIDVALIDITY is the creation time in seconds: a mailbox re-created within
        // the same second would get the old one back, so bump it explicitly then.
        if self.uidvalidity() == old {
            let next = (old + 1).to_string();
            let args = [
                "mailbox",
                "update",
                "-u",
                "support",
                "--uid-validity",
                &next,
                "INBOX",
            ];
            self.doveadm(&args);
        }
        assert_ne!(self.uidvalidity(), old, "reset must give a new UIDVALIDITY");
    }

    /// The `[[mailbox]]` for this server's support user: implicit TLS trusting the test CA.
    pub fn mailbox(&self) -> Mailbox {
        self.mailbox_of("support")
    }

    /// The `[[mailbox]]` named USER for USER's INBOX (password `USER-pass`).
    pub fn mailbox_of(&self, user: &str) -> Mailbox {
        Mailbox {
            name: user.into(),
            host: "localhost".into(),
            port: self.imaps_port,
            tls: "implicit".into(),
            ca_file: Some(self.ca_file()),
            allow_insecure: false,
            username: user.into(),
            password: quoted(&format!("{user}-pass")),
            folder: "INBOX".into(),
            after: r#""seen""#.into(),
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        eprint_log_tail_if_panicking(&self.dir.join("dovecot.log"), 30);
        let _ = self.server(&["stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// While the test panics, prints the last LINES lines of a server's log at PATH to stderr.
pub fn eprint_log_tail_if_panicking(path: &Path, lines: usize) {
    if !std::thread::panicking() {
        return;
    }
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    eprintln!("--- last lines of {}", path.display());
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
}

/// Removes every variable starting with one of PREFIXES from CMD's environment, so a developer
/// shell that sourced a test server's `env` file cannot leak into a test.
pub fn scrub_env(cmd: &mut Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        if prefixes
            .iter()
            .any(|p| key.to_string_lossy().starts_with(p))
        {
            cmd.env_remove(key);
        }
    }
}

/// The KEY=VALUE lines a `tests/env` script prints (`env`, `start`); quotes removed.
pub fn parse_env_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export ").or(Some(l.trim())))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// A private OAuth2 token server (`tests/env/oauth2-server`, Python stdlib) on two free loopback
/// ports: plain HTTP on `port`, HTTPS on `tls_port` (its own CA: [`OAuth2Server::ca_file`]). It
/// signs HS256 JWT access tokens with [`OAuth2Server::key_file`]; a Dovecot from
/// [`Dovecot::start_oauth2`] and a sink from `Sink::start_oauth2` accept them. Dropping it stops
/// the server and removes its directory.
pub struct OAuth2Server {
    pub dir: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    /// Knobs for tests/env/oauth2-server (`OAUTH2_ACCESS_TTL`, ...), kept across restarts.
    env: Vec<(String, String)>,
    /// What `oauth2-server start` printed (`OAUTH2_ISSUER`, ...).
    vars: BTreeMap<String, String>,
}

impl OAuth2Server {
    /// The confidential client of the server's default `OAUTH2_CLIENTS`.
    pub const CLIENT_ID: &str = "connector";
    pub const CLIENT_SECRET: &str = "connector-secret";
    /// The public client (no secret) of the default `OAUTH2_CLIENTS`, e.g. for the device flow.
    pub const PUBLIC_CLIENT_ID: &str = "connector-public";
    /// What a delegated client asks for (IMAP + SMTP + a refresh token); also the server's
    /// default scope for minted refresh tokens and device codes.
    pub const SCOPE_USER: &str = "https://outlook.office.com/IMAP.AccessAsUser.All \
         https://outlook.office.com/SMTP.Send offline_access";
    /// What an app-only (client_credentials) client asks for.
    pub const SCOPE_APP: &str = "https://outlook.office365.com/.default";
    /// The `grant_type` of RFC 8628 polls.
    pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

    pub fn start() -> OAuth2Server {
        OAuth2Server::start_with(&[])
    }

    /// Like [`OAuth2Server::start`], with oauth2-server knobs such as
    /// `("OAUTH2_ACCESS_TTL", "5")` or `("OAUTH2_DEVICE_INTERVAL", "0")`.
    pub fn start_with(env: &[(&str, &str)]) -> OAuth2Server {
        let mut o = OAuth2Server {
            dir: unique_dir("mto"),
            port: 0,
            tls_port: 0,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            vars: BTreeMap::new(),
        };
        for _ in 0..5 {
            o.port = free_port();
            o.tls_port = free_port();
            // the daemon's output goes to DIR/server.log, so pipes are fine here
            let out = o.script(&["start"]).output().unwrap();
            if out.status.success() {
                o.vars = parse_env_lines(&String::from_utf8_lossy(&out.stdout));
                return o;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            // Only a port that someone else took in the meantime is worth another try.
            assert!(err.contains("in use"), "oauth2-server start failed:\n{err}");
        }
        panic!("oauth2-server start: no free ports after 5 tries");
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        scrub_env(&mut cmd, &["OAUTH2_"]);
        cmd.arg(script("oauth2-server"))
            .arg("-d")
            .arg(&self.dir)
            .args(args)
            .env("OAUTH2_PORT", self.port.to_string())
            .env("OAUTH2_TLS_PORT", self.tls_port.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `oauth2-server ARGS`, which must succeed; returns its stdout, trimmed.
    fn run(&self, args: &[&str]) -> String {
        let out = self.script(args).output().unwrap();
        check(&format!("oauth2-server {args:?}"), &out)
            .trim()
            .to_owned()
    }

    /// `oauth2-server restart`: same ports, key, refresh tokens, device codes and grants log.
    pub fn restart(&self) {
        self.run(&["restart"]);
    }

    /// The token endpoint over plain HTTP.
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The token endpoint over HTTPS (trust [`OAuth2Server::ca_file`]).
    pub fn token_url_https(&self) -> String {
        format!("https://localhost:{}/token", self.tls_port)
    }

    /// The RFC 8628 device authorization endpoint over plain HTTP.
    pub fn device_url(&self) -> String {
        format!("http://127.0.0.1:{}/devicecode", self.port)
    }

    /// The CA that signed the HTTPS port's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// The HS256 key (one line of base64) that signs every access token.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("jwt.key")
    }

    /// The `iss` of every access token.
    pub fn issuer(&self) -> String {
        self.vars
            .get("OAUTH2_ISSUER")
            .unwrap_or_else(|| {
                panic!(
                    "oauth2-server start printed no OAUTH2_ISSUER: {:?}",
                    self.vars
                )
            })
            .clone()
    }

    /// What imap-server (`IMAP_OAUTH2=1`) and smtp-sink (`SMTP_OAUTH2=1`) read to accept this
    /// server's tokens: the key file, the issuer, the introspection URL and the CA.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OAUTH2_JWT_KEY_FILE".into(),
                self.key_file().to_string_lossy().into_owned(),
            ),
            ("OAUTH2_ISSUER".into(), self.issuer()),
            (
                "OAUTH2_INTROSPECTION_URL".into(),
                format!("http://127.0.0.1:{}/introspect", self.port),
            ),
            (
                "OAUTH2_CA_FILE".into(),
                self.ca_file().to_string_lossy().into_owned(),
            ),
        ]
    }

    /// A fresh refresh token for USER (stands in for the browser consent), for CLIENT_ID
    /// (default [`OAuth2Server::CLIENT_ID`]) and SCOPE (default [`OAuth2Server::SCOPE_USER`]).
    pub fn refresh_token(
        &self,
        user: &str,
        client_id: Option<&str>,
        scope: Option<&str>,
    ) -> String {
        let mut args = vec!["refresh-token", user];
        if client_id.is_some() || scope.is_some() {
            args.push(client_id.unwrap_or(OAuth2Server::CLIENT_ID));
        }
        if let Some(s) = scope {
            args.push(s);
        }
        self.run(&args)
    }

    /// An access token minted directly for USER (`app:CLIENT_ID` = app-only), with KV such as
    /// `"ttl=-60"` (expired), `"nbf=30"`, `"scope=..."`, `"iss=..."`, `"bad_signature=1"`.
    pub fn access_token(&self, user: &str, kv: &[&str]) -> String {
        let mut args = vec!["access-token", user];
        args.extend_from_slice(kv);
        self.run(&args)
    }

    /// Revokes refresh tokens: KV of `user=U`, `client_id=C`, `refresh_token=T` (none = all).
    pub fn revoke(&self, kv: &[&str]) {
        let mut args = vec!["revoke"];
        args.extend_from_slice(kv);
        self.run(&args);
    }

    /// Injects a fault into the token endpoint: MODE `status` (VALUE = HTTP status), `delay`
    /// (VALUE = seconds), `drop` or `garbage` (VALUE ignored), for COUNT requests (None = until
    /// [`OAuth2Server::fault_none`]).
    pub fn fault(&self, mode: &str, value: &str, count: Option<u32>) {
        self.fault_on("token", mode, value, count);
    }

    /// Like [`OAuth2Server::fault`], for ENDPOINT `token`, `devicecode`, `introspect` or `all`.
    pub fn fault_on(&self, endpoint: &str, mode: &str, value: &str, count: Option<u32>) {
        // empty VALUE/COUNT: the script's defaults (status 500, delay 5 s; until `fault none`)
        let count = count.map(|c| c.to_string()).unwrap_or_default();
        self.run(&["fault", mode, value, &count, endpoint]);
    }

    pub fn fault_none(&self) {
        self.run(&["fault", "none"]);
    }

    /// Device flow: USER signs in and consents to the code USER_CODE (the browser step).
    pub fn approve(&self, user_code: &str, user: &str) {
        self.run(&["approve", user_code, user]);
    }

    /// Device flow: the user declines USER_CODE; the next poll gets `access_denied`.
    pub fn deny(&self, user_code: &str) {
        self.run(&["deny", user_code]);
    }

    /// Every line of `DIR/grants.jsonl` so far: one per /token, /devicecode and /introspect
    /// request, and per minted refresh token or device approval (`endpoint` "admin").
    pub fn grants(&self) -> Vec<Value> {
        let path = self.dir.join("grants.jsonl");
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: bad line ({e}): {l}", path.display()))
            })
            .collect()
    }

    /// POSTs FORM (urlencoded) to PATH (e.g. "/token", "/devicecode") over plain HTTP; returns
    /// the status and the JSON body.
    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to oauth2-server port {}: {e}", self.port));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut raw)
            .unwrap_or_else(|e| panic!("reading the reply to POST {path}: {e}"));
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP reply to POST {path}: {text:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line for POST {path}: {head:?}"));
        let json = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("POST {path}: {status} body is not JSON ({e}): {body:?}"));
        (status, json)
    }
}

/// `application/x-www-form-urlencoded` encoding of S.
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out += &format!("%{b:02X}"),
        }
    }
    out
}

impl Drop for OAuth2Server {
    fn drop(&mut self) {
        eprint_log_tail_if_panicking(&self.dir.join("server.log"), 20);
        let _ = self.script(&["stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `[[mailbox]]` table of the config.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: String,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure: bool,
    pub username: String,
    /// A TOML value, written as is: `quoted("pw")`, `{ env = "VAR" }`, ...
    pub password: String,
    pub folder: String,
    /// A TOML value, written as is: `"seen"`, `"delete"`, `{ move = "Processed" }`.
    pub after: String,
}

/// S as a TOML basic string (JSON string syntax is a subset of it for what we write).
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Mailbox {
    /// The support mailbox over plain TCP on 127.0.0.1:PORT (`allow-insecure`).
    pub fn plain(port: u16) -> Mailbox {
        Mailbox {
            name: "support".into(),
            host: "127.0.0.1".into(),
            port,
            tls: "none".into(),
            ca_file: None,
            allow_insecure: true,
            username: "support".into(),
            password: quoted("support-pass"),
            folder: "INBOX".into(),
            after: r#""seen""#.into(),
        }
    }

    pub fn toml(&self) -> String {
        let mut t = String::from("[[mailbox]]\n");
        t += &format!("name = {}\n", quoted(&self.name));
        t += &format!("host = {}\n", quoted(&self.host));
        t += &format!("port = {}\n", self.port);
        t += &format!("tls = {}\n", quoted(&self.tls));
        if let Some(ca) = &self.ca_file {
            t += &format!("ca-file = {}\n", quoted(&ca.to_string_lossy()));
        }
        if self.allow_insecure {
            t += "allow-insecure = true\n";
        }
        t += &format!("username = {}\n", quoted(&self.username));
        t += &format!("password = {}\n", self.password);
        t += &format!("folder = {}\n", quoted(&self.folder));
        t += &format!("after = {}\n", self.after);
        t += &format!("addresses = [{}]\n", quoted(SUPPORT_ADDR));
        t
    }
}

/// The exit status and output of one `mailticket` run.
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mailticket {:?} exited with {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// Asserts exit status CODE and returns the run.
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "unexpected exit status: {self:?}");
        self
    }

    pub fn success(self) -> Run {
        self.code(0)
    }

    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts that stderr contains every one of NEEDLES (case-insensitive).
    pub fn stderr_mentions(&self, needles: &[&str]) {
        let err = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                err.contains(&n.to_lowercase()),
                "stderr does not mention {n:?}: {self:?}"
            );
        }
    }
}

/// `mailticket` with a clean environment, nothing else set (the per-user config folder is
/// `CWD/.xdg-config`, so no config of the machine's user is found).
pub fn mailticket_cmd(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailticket"));
    cmd.current_dir(cwd)
        .env_remove("MAILTICKET_CONFIG")
        .env("XDG_CONFIG_HOME", cwd.join(".xdg-config"))
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    cmd
}

/// Runs CMD to completion, feeding it STDIN; kills it and fails after [`RUN_TIMEOUT`].
pub fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    let args = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.unwrap_or_default().to_vec();
        // a process that exits without reading all of stdin closes the pipe: not our failure
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(RUN_TIMEOUT).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            return true;
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    let run = Run {
        args,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!timed_out, "killed after {RUN_TIMEOUT:?}: {run:?}");
    run
}

/// A scratch directory holding `mailticket.toml` and the store.
pub struct Workdir {
    pub dir: PathBuf,
    /// The `[store]` table of every config written; `None`: the SQLite file `db()`.
    store: Option<String>,
}

impl Workdir {
    /// An empty work directory: no config file yet.
    pub fn new() -> Workdir {
        Workdir {
            dir: unique_dir("mtw"),
            store: None,
        }
    }

    /// An empty work directory whose configs use this `[store]` table (a PostgreSQL
    /// store: [`crate::pg_harness::Postgres::store_toml`]).
    pub fn on_store(store: String) -> Workdir {
        Workdir {
            dir: unique_dir("mtw"),
            store: Some(store),
        }
    }

    /// A work directory whose config has these mailboxes.
    pub fn with(mailboxes: &[Mailbox]) -> Workdir {
        let wd = Workdir::new();
        wd.write_config(mailboxes);
        wd
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("mailticket.toml")
    }

    /// How the message `message_id` is kept in this SQLite store: `codec:number of raw
    /// parts`.
    pub fn raw_layout(&self, message_id: &str) -> String {
        rusqlite::Connection::open(self.db())
            .unwrap()
            .query_row(
                "SELECT codec || ':' || (SELECT count(*) FROM raw_part WHERE message = m.id) \
                 FROM message m WHERE message_id = ?1",
                [message_id],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Asserts that message `message_id` of this SQLite store was stored from a spool file
    /// (in parts), comes back as `raw` byte for byte, with its one attachment's `size` and
    /// `sha256` indexed, and that no spool file is left.
    pub fn assert_spooled_and_kept(&self, message_id: &str, raw: &[u8], size: u64, sha256: &str) {
        let parts = self.raw_layout(message_id);
        let n: u32 = parts.strip_prefix("zstd-parts:").unwrap().parse().unwrap();
        assert!(
            n >= 2,
            "{message_id}: stored from its spool file, in parts: {parts}"
        );
        let shown = self
            .mailticket_db(&["show", message_id, "--raw"], None)
            .success();
        assert!(
            shown.stdout.as_bytes() == raw,
            "{message_id}: byte for byte"
        );
        let shown = self
            .mailticket_db(&["show", message_id, "--json"], None)
            .success()
            .json();
        let att = &shown["messages"][0]["attachments"][0];
        assert_eq!(att["size"].as_u64(), Some(size), "{att}");
        assert_eq!(att["sha256"].as_str(), Some(sha256), "{att}");
        let left: Vec<String> = std::fs::read_dir(self.db().parent().unwrap())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.contains("spool"))
            .collect();
        assert!(left.is_empty(), "spool files left: {left:?}");
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("mailticket.db")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write_config(&self, mailboxes: &[Mailbox]) {
        self.write_config_with(mailboxes, "");
    }

    /// Like [`Workdir::write_config`], with EXTRA (more TOML tables, e.g. `[watch]`) at the end.
    pub fn write_config_with(&self, mailboxes: &[Mailbox], extra: &str) {
        let mut t = match &self.store {
            Some(store) => store.clone(),
            None => format!("[store]\npath = {}\n", quoted(&self.db().to_string_lossy())),
        };
        for mb in mailboxes {
            t += "\n";
            t += &mb.toml();
        }
        t += "\n";
        t += extra;
        self.write_raw_config(&t);
    }

    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// `mailticket --config DIR/mailticket.toml ARGS` (not yet run).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = mailticket_cmd(&self.dir);
        cmd.arg("--config").arg(self.config()).args(args);
        cmd
    }

    /// `mailticket --config DIR/mailticket.toml ARGS`.
    pub fn mailticket(&self, args: &[&str]) -> Run {
        run(self.cmd(args), None)
    }

    /// `mailticket --db DIR/mailticket.db ARGS`, with no config file anywhere.
    pub fn mailticket_db(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut cmd = mailticket_cmd(&self.dir);
        cmd.arg("--db").arg(self.db()).args(args);
        run(cmd, stdin)
    }

    /// `sync --json`, which must succeed; returns the summary.
    pub fn sync(&self) -> Value {
        self.mailticket(&["sync", "--json"]).success().json()
    }

    /// `tickets --status all --json`, which must succeed.
    pub fn tickets(&self) -> Vec<Value> {
        tickets_of(self.mailticket(&["tickets", "--status", "all", "--json"]))
    }

    /// `show ID --json`, which must succeed.
    pub fn show(&self, id: u64) -> Value {
        self.mailticket(&["show", &id.to_string(), "--json"])
            .success()
            .json()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("MAILTICKET_TEST_KEEP").is_some() {
            eprintln!("MAILTICKET_TEST_KEEP: keeping {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The array a `tickets --json` run printed.
pub fn tickets_of(run: Run) -> Vec<Value> {
    let v = run.success().json();
    v.as_array()
        .unwrap_or_else(|| panic!("tickets --json is not an array: {v}"))
        .clone()
}

/// A ticket's `id`.
pub fn id_of(ticket: &Value) -> u64 {
    ticket["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("ticket without numeric id: {ticket}"))
}

/// The counts of a `sync --json` / `import --json` summary (or one of its `mailboxes`).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Counts {
    pub fetched: u64,
    pub created: u64,
    pub threaded: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    pub acks_queued: u64,
}

impl Counts {
    /// Reads the counts of V, asserting that every field is there and `errors` is an array.
    pub fn of(v: &Value) -> Counts {
        let n = |key: &str| {
            v[key]
                .as_u64()
                .unwrap_or_else(|| panic!("summary has no numeric {key:?}: {v}"))
        };
        assert!(v["errors"].is_array(), "summary has no errors array: {v}");
        Counts {
            fetched: n("fetched"),
            created: n("created"),
            threaded: n("threaded"),
            duplicates: n("duplicates"),
            quarantined: n("quarantined"),
            acks_queued: n("acks_queued"),
        }
    }
}

/// Asserts a one-mailbox summary: totals and the single `mailboxes` entry both equal EXPECTED,
/// and no errors were reported.
pub fn assert_summary(summary: &Value, expected: Counts) {
    assert_eq!(Counts::of(summary), expected, "totals of {summary}");
    let boxes = summary["mailboxes"]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no mailboxes array: {summary}"));
    assert_eq!(boxes.len(), 1, "one mailbox expected: {summary}");
    assert_eq!(
        Counts::of(&boxes[0]),
        expected,
        "mailbox entry of {summary}"
    );
    assert_eq!(
        summary["errors"],
        Value::Array(vec![]),
        "errors in {summary}"
    );
    assert_eq!(
        boxes[0]["errors"],
        Value::Array(vec![]),
        "errors in {summary}"
    );
}

/// `Counts` with only `fetched` and `created` set: the plain "all new" pass.
pub fn created(n: u64) -> Counts {
    Counts {
        fetched: n,
        created: n,
        ..Counts::default()
    }
}

/// Generated messages (`tests/env/mailgen.py`).
pub mod mailgen {
    use super::*;

    fn python(args: &[&str]) -> Vec<u8> {
        let out = Command::new("python3")
            .arg(script("mailgen.py"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        check(&format!("mailgen.py {args:?}"), &out);
        out.stdout
    }

    /// Message INDEX of SEED (CRLF line ends), exactly as `imap-server seed` would write it
    /// when INDEX is in the small (or, with LARGE, the large) range.
    pub fn one(index: u32, seed: u32, large: bool) -> Vec<u8> {
        let (i, s) = (index.to_string(), seed.to_string());
        let l = if large { "1" } else { "0" };
        python(&["one", "--index", &i, "--seed", &s, "--large", l])
    }

    /// Messages 0..COUNT of SEED, byte for byte what [`one`] gives, from one python3 process
    /// (each `mailgen.py` start costs ~0.5 s).
    pub fn many(count: u32, seed: u32) -> Vec<Vec<u8>> {
        let code = "import sys; sys.path.insert(0, sys.argv[1]); import mailgen\n\
            out = sys.stdout.buffer\n\
            for i in range(int(sys.argv[2])):\n\
            \x20   data = mailgen.message(i, int(sys.argv[3]))[0].replace(b'\\n', b'\\r\\n')\n\
            \x20   out.write(b'%d\\n' % len(data) + data)\n";
        let dir = env_dir();
        let (n, s) = (count.to_string(), seed.to_string());
        let mut out = python_code(code, &[&dir.to_string_lossy(), &n, &s]);
        let mut messages = Vec::new();
        while let Some(nl) = out.iter().position(|&b| b == b'\n') {
            let len: usize = std::str::from_utf8(&out[..nl]).unwrap().parse().unwrap();
            messages.push(out[nl + 1..nl + 1 + len].to_vec());
            out.drain(..nl + 1 + len);
        }
        assert_eq!(messages.len(), count as usize);
        messages
    }

    /// Writes SMALL generated messages of SEED as an mbox file.
    pub fn mbox(path: &Path, small: u32, seed: u32) {
        let (p, n, s) = (path.to_string_lossy(), small.to_string(), seed.to_string());
        python(&["mbox", &p, "--small", &n, "--seed", &s]);
    }

    /// Writes SMALL generated messages of SEED into the Maildir DIR.
    pub fn maildir(dir: &Path, small: u32, seed: u32) {
        let (p, n, s) = (dir.to_string_lossy(), small.to_string(), seed.to_string());
        python(&["maildir", &p, "--small", &n, "--seed", &s]);
    }
}

/// A small deterministic PRNG (splitmix64): reproducible "random" test input without a crate.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in LO..=HI.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}

/// Spawns `mailticket` without waiting (for the crash test).
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Workdir {
    /// The `message_id` of every inbound message of every ticket (`show --json` of each ticket).
    pub fn ticketed_message_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for t in self.tickets() {
            let shown = self.show(id_of(&t));
            let msgs = shown["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("show --json has no messages array: {shown}"));
            for m in msgs.iter().filter(|m| m["direction"] == "in") {
                let id = m["message_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("message without message_id: {m}"));
                ids.push(id.to_owned());
            }
        }
        ids
    }
}

/// A minimal plain-text message to support, CRLF line ends. EXTRA is more header lines,
/// each ending in "\r\n".
pub fn simple_mail(from: &str, message_id: &str, subject: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: Support <{SUPPORT_ADDR}>\r\nSubject: {subject}\r\n\
         Date: Mon, 06 Jan 2025 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n{extra}\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello,\r\n\r\nplease have a look.\r\n\r\nRegards\r\n"
    )
    .into_bytes()
}

/// A message of about `mb` MB: a line of text and a random base64 attachment; with the
/// attachment's decoded size and SHA-256 (hex).
pub fn huge_mail(message_id: &str, mb: usize, seed: u64) -> (Vec<u8>, u64, String) {
    use base64::Engine as _;
    let data = Prng::new(seed).bytes(mb * 750_000);
    let mut mail = format!(
        "From: Ola <ola@customer.example>\r\nTo: Support <support@example.com>\r\n\
         Subject: The whole archive\r\nDate: Mon, 06 Jan 2025 10:00:00 +0000\r\n\
         Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nThe scans, attached.\r\n--b1\r\n\
         Content-Type: application/zip; name=\"archive.zip\"\r\n\
         Content-Disposition: attachment; filename=\"archive.zip\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    for line in b64.as_bytes().chunks(76) {
        mail.extend_from_slice(line);
        mail.extend_from_slice(b"\r\n");
    }
    mail.extend_from_slice(b"--b1--\r\n");
    let sha = mailticket::message::hex(&mailticket::message::sha256(&data));
    (mail, data.len() as u64, sha)
}

/// Asserts that V is an RFC 3339 date-time string: `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`.
pub fn assert_rfc3339(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let b = s.as_bytes();
    let digits =
        |mut r: std::ops::Range<usize>| r.all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let ok_date = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let mut rest = s.get(19..).unwrap_or("");
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        assert!(n > 0, "empty fraction in {s:?}");
        rest = &frac[n..];
    }
    let z = rest.as_bytes();
    let ok_zone = rest == "Z"
        || rest == "z"
        || (z.len() == 6
            && (z[0] == b'+' || z[0] == b'-')
            && z[3] == b':'
            && [z[1], z[2], z[4], z[5]].iter().all(u8::is_ascii_digit));
    assert!(ok_date && ok_zone, "not an RFC 3339 date-time: {s:?}");
}

/// Polls COND every 50 ms until it holds; fails with WHAT after LIMIT.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `mailticket watch` running in the background, its stderr in `DIR/watch.log`. Dropping
/// it kills the process.
pub struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Workdir {
    /// Starts `mailticket watch ARGS` in the background.
    pub fn watch(&self, args: &[&str]) -> Watcher {
        self.watch_env(args, &[])
    }

    /// Starts `mailticket watch ARGS` in the background, with ENV set.
    pub fn watch_env(&self, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Watcher {
        let log = self.path("watch.log");
        let mut cmd = self.cmd(&["watch"]);
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Watcher {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    /// Number of tickets, of any status; 0 while there is no store yet (a `watch` that has
    /// just started may not have made it: reading commands create none).
    pub fn ticket_count(&self) -> usize {
        let run = self.mailticket(&["tickets", "--status", "all", "--json"]);
        if run.code == Some(2) && run.stderr.contains("no store at") {
            return 0;
        }
        tickets_of(run).len()
    }
}

impl Watcher {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain NEEDLE.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least N log lines contain NEEDLE.
    pub fn wait_log(&self, needle: &str, n: usize, limit: Duration) {
        let t0 = std::time::Instant::now();
        while self.count(needle) < n {
            assert!(
                t0.elapsed() < limit,
                "no {n}x {needle:?} in the watch log after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIG (e.g. "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code and how long that took. Fails
    /// after LIMIT.
    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), t0.elapsed());
            }
            assert!(
                t0.elapsed() < limit,
                "watch still running after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then asserts exit status 0 within LIMIT; returns the time it took.
    pub fn stop(&mut self, limit: Duration) -> Duration {
        self.signal("TERM");
        let (code, took) = self.wait_exit(limit);
        assert_eq!(code, Some(0), "watch exit status:\n{}", self.log());
        took
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- watch log:\n{}", self.log());
        }
    }
}

/// A misbehaving IMAP server (`tests/env/hostile-imap`, Python stdlib) on a free loopback
/// port, plain TCP, in one of its `--mode`s. It keeps its mailbox in memory and takes the
/// `.eml` files of its spool directory as new mail at every SELECT ([`HostileImap::deliver`]).
/// It exits by itself after its lifetime; dropping the handle ends it sooner and removes its
/// directory (`/tmp/mth-PID-N`, which `scripts/test` reaps when a test binary died).
pub struct HostileImap {
    pub dir: PathBuf,
    pub port: u16,
    child: Child,
}

impl HostileImap {
    /// Starts the server in MODE with more `hostile-imap` arguments (`--messages 5`, ...).
    pub fn start(mode: &str, args: &[&str]) -> HostileImap {
        let dir = unique_dir("mth");
        let spool = dir.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.join("server.log")).unwrap();
            let mut child = Command::new("python3")
                .arg(script("hostile-imap"))
                .args([
                    "--port",
                    &port.to_string(),
                    "--mode",
                    mode,
                    "--lifetime",
                    "150",
                ])
                .arg("--spool")
                .arg(&spool)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .unwrap();
            std::fs::write(dir.join("pid"), child.id().to_string()).unwrap();
            let mut first = String::new();
            let stdout = child.stdout.take().unwrap();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first);
            if first.starts_with("listening") {
                return HostileImap { dir, port, child };
            }
            let _ = child.wait();
            let err = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            assert!(err.contains("in use"), "hostile-imap start failed:\n{err}");
        }
        panic!("hostile-imap start: no free port after 5 tries");
    }

    /// Puts MESSAGE in the spool: the next SELECT gives it the next UID (with `\Seen` when
    /// SEEN, as if someone had read it before mailticket's next run).
    pub fn deliver(&self, name: &str, message: &[u8], seen: bool) {
        let spool = self.dir.join("spool");
        let file = format!("{name}{}.eml", if seen { ".seen" } else { "" });
        let tmp = self.dir.join(&file);
        std::fs::write(&tmp, message).unwrap();
        std::fs::rename(&tmp, spool.join(file)).unwrap();
    }

    /// The `[[mailbox]]` for this server: plain TCP to 127.0.0.1 (`allow-insecure`).
    pub fn mailbox(&self) -> Mailbox {
        Mailbox::plain(self.port)
    }
}

impl Drop for HostileImap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
