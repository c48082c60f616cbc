//! Where a password comes from: the config file itself, an environment variable, a file, or
//! the output of a command. A secret never appears in `Debug` output or in logs.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// A secret as written in the config: `"literal"`, `{ env = "VAR" }`, `{ file = "path" }` or
/// `{ command = ["prog", "arg"] }`.
#[derive(Clone)]
pub enum Secret {
    /// The secret itself, written in the config file.
    Plain(String),
    /// Source named by a one-key table.
    Source(SecretSource),
}

/// The one-key table forms of a secret.
#[derive(Clone)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file; trailing newlines are dropped.
    File(PathBuf),
    /// A command whose standard output (first line) is the secret.
    Command(Vec<String>),
}

/// The forms a secret may take, for an error about one that is none of them.
const FORMS: &str = "a secret is one of: \"the secret itself\", { env = \"VARIABLE\" }, \
                     { file = \"/path/to/file\" }, { command = [\"program\", \"argument\"] }";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Secret, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

/// Reads a secret in one of its four forms, and says which forms there are when it is none.
struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FORMS)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Secret, E> {
        Ok(Secret::Plain(v.to_owned()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Secret, A::Error> {
        use serde::de::Error as _;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!("an empty table; {FORMS}")));
        };
        let source = match key.as_str() {
            "env" => SecretSource::Env(map.next_value()?),
            "file" => SecretSource::File(map.next_value()?),
            "command" => SecretSource::Command(map.next_value()?),
            other => {
                return Err(A::Error::custom(format!("unknown key `{other}`; {FORMS}")));
            }
        };
        if let Some(more) = map.next_key::<String>()? {
            return Err(A::Error::custom(format!(
                "`{key}` and `{more}` in one table; {FORMS}"
            )));
        }
        Ok(Secret::Source(source))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret(***)"),
            Secret::Source(SecretSource::Env(v)) => write!(f, "Secret(env {v})"),
            Secret::Source(SecretSource::File(p)) => write!(f, "Secret(file {})", p.display()),
            Secret::Source(SecretSource::Command(c)) => {
                write!(
                    f,
                    "Secret(command {})",
                    c.first().map_or("", String::as_str)
                )
            }
        }
    }
}

/// How long a secret command may run when its section names no `timeout`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Secret {
    /// Reads the secret now. `what` names its use in the error ("mailbox support password").
    /// A command gets [`COMMAND_TIMEOUT`].
    pub fn resolve(&self, what: &str) -> Result<Revealed> {
        self.resolve_within(what, COMMAND_TIMEOUT)
    }

    /// [`Secret::resolve`], killing a command that has not finished within `limit`.
    pub fn resolve_within(&self, what: &str, limit: Duration) -> Result<Revealed> {
        let err = |message: String| Error::Secret {
            what: what.to_owned(),
            message,
        };
        let value = match self {
            Secret::Plain(s) => s.clone(),
            Secret::Source(SecretSource::Env(var)) => std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?,
            Secret::Source(SecretSource::File(path)) => {
                warn_if_shared(path, what);
                std::fs::read_to_string(path)
                    .map_err(|e| err(format!("{}: {e}", path.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned()
            }
            Secret::Source(SecretSource::Command(argv)) => run_command(argv, limit).map_err(err)?,
        };
        if value.is_empty() {
            return Err(err("it is empty".to_owned()));
        }
        Ok(Revealed(value))
    }

    /// Where the secret comes from, without reading it (a literal is hashed): two secrets
    /// with the same origin are the same secret. For commands that must not read secrets
    /// (`oauth2 status`).
    pub fn origin(&self) -> String {
        match self {
            Secret::Plain(s) => {
                let hash = crate::message::hex(&crate::message::sha256(s.as_bytes()));
                format!("literal {hash}")
            }
            Secret::Source(SecretSource::Env(v)) => format!("env {v}"),
            Secret::Source(SecretSource::File(p)) => format!("file {}", p.display()),
            Secret::Source(SecretSource::Command(c)) => format!("command {}", c.join("\0")),
        }
    }
}

/// Runs a secret command and returns the first line of its output; kills it after `limit`,
/// so a command that hangs (a prompt nobody answers, a dead network share) fails the run
/// instead of holding it, and cron runs do not pile up behind it.
fn run_command(argv: &[String], limit: Duration) -> std::result::Result<String, String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| "empty command".to_owned())?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    // Read on a thread of its own: a full pipe must not stall the child, and a grandchild that
    // keeps the pipe open after the kill must not stall us.
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut s) = stdout {
            let _ = s.read_to_end(&mut out);
        }
        let _ = tx.send(out);
    });
    let status = wait_for(&mut child, limit).ok_or_else(|| {
        format!(
            "{prog} did not finish within {} s and was killed",
            limit.as_secs_f64()
        )
    })?;
    let status = status.map_err(|e| format!("waiting for {prog}: {e}"))?;
    if !status.success() {
        return Err(format!("{prog} exited with {status}"));
    }
    let out = rx
        .recv_timeout(Duration::from_secs(1))
        .map_err(|_| format!("{prog} exited but left its output open"))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

/// The child's exit status, or `None` (and the child killed and reaped) after `limit`.
fn wait_for(
    child: &mut Child,
    limit: Duration,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(Ok(status)),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// A resolved secret. Its `Debug` is redacted too; read it with [`Revealed::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Revealed(String);

impl Revealed {
    /// Wraps a secret obtained at run time (an access or refresh token).
    pub fn new(value: String) -> Revealed {
        Revealed(value)
    }

    /// The secret's text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Revealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The key inside a `whsec_...` secret; `None` when it is not one.
pub fn whsec_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.trim().strip_prefix("whsec_")?;
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}

/// Warns when the secret file `path` (for `what`) can be read by its group or by others:
/// a password there is only as private as the file.
fn warn_if_shared(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o044 != 0
    {
        tracing::warn!(
            file = %path.display(),
            secret = what,
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "secret file is readable by its group or by others: chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[allow(dead_code)]
        password: Secret,
    }

    fn read(text: &str) -> std::result::Result<Secret, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.password)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_secret_that_is_none_of_the_forms_lists_them_all() {
        for (text, says) in [
            ("password = { evn = 'X' }", "unknown key `evn`"),
            (
                "password = { env = 'X', file = 'y' }",
                "`env` and `file` in one table",
            ),
            ("password = {}", "an empty table"),
            ("password = 5", "invalid type"),
        ] {
            let e = read(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
            for form in ["the secret itself", "{ env =", "{ file =", "{ command ="] {
                assert!(e.contains(form), "{text}: {e}");
            }
            assert!(!e.contains("untagged"), "{e}");
        }
        assert!(matches!(read("password = 'p'"), Ok(Secret::Plain(p)) if p == "p"));
        assert!(matches!(
            read("password = { command = ['a', 'b'] }"),
            Ok(Secret::Source(SecretSource::Command(c))) if c == ["a", "b"]
        ));
        assert!(matches!(
            read("password = { file = '/f' }"),
            Ok(Secret::Source(SecretSource::File(_)))
        ));
        assert!(matches!(
            read("password = { env = 'V' }"),
            Ok(Secret::Source(SecretSource::Env(v))) if v == "V"
        ));
    }

    #[derive(Deserialize, Debug)]
    struct T {
        s: Secret,
    }

    #[test]
    fn all_forms_parse_and_debug_is_redacted() {
        let t: T = toml::from_str(r#"s = "hunter2""#).unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(t.s.resolve("x").unwrap().expose(), "hunter2");
        let t: T = toml::from_str(r#"s = { command = ["echo", "from-cmd"] }"#).unwrap();
        assert_eq!(t.s.resolve("x").unwrap().expose(), "from-cmd");
        let t: T = toml::from_str(r#"s = { env = "MAILTICKET_TEST_UNSET_VAR" }"#).unwrap();
        let e =
            t.s.resolve("mailbox support password")
                .unwrap_err()
                .to_string();
        assert!(e.contains("MAILTICKET_TEST_UNSET_VAR"), "{e}");
        assert!(toml::from_str::<T>(r#"s = { nope = "x" }"#).is_err());
    }

    #[test]
    fn a_hanging_command_is_killed_after_its_limit() {
        let t: T = toml::from_str(r#"s = { command = ["sleep", "1000"] }"#).unwrap();
        let start = Instant::now();
        let e =
            t.s.resolve_within("mailbox support password", Duration::from_millis(300))
                .unwrap_err()
                .to_string();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(e.contains("mailbox support password"), "{e}");
        assert!(e.contains("did not finish within 0.3 s"), "{e}");
        let t: T = toml::from_str(r#"s = { command = ["false"] }"#).unwrap();
        let e = t.s.resolve("x").unwrap_err().to_string();
        assert!(e.contains("exited with"), "{e}");
    }
}
