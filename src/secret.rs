//! Where a password comes from: the config file itself, an environment variable, a file, or
//! the output of a command. A secret never appears in `Debug` output or in logs.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A secret as written in the config: `"literal"`, `{ env = "VAR" }`, `{ file = "path" }` or
/// `{ command = ["prog", "arg"] }`.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    /// The secret itself, written in the config file.
    Plain(String),
    /// Source named by a one-key table.
    Source(SecretSource),
}

/// The one-key table forms of a secret.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file; trailing newlines are dropped.
    File(PathBuf),
    /// A command whose standard output (first line) is the secret.
    Command(Vec<String>),
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

impl Secret {
    /// Reads the secret now. `what` names its use in the error ("mailbox support password").
    pub fn resolve(&self, what: &str) -> Result<Revealed> {
        let err = |message: String| Error::Secret {
            what: what.to_owned(),
            message,
        };
        let value = match self {
            Secret::Plain(s) => s.clone(),
            Secret::Source(SecretSource::Env(var)) => std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?,
            Secret::Source(SecretSource::File(path)) => std::fs::read_to_string(path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            Secret::Source(SecretSource::Command(argv)) => {
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| err("empty command".to_owned()))?;
                let out = Command::new(prog)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| err(format!("cannot run {prog}: {e}")))?;
                if !out.status.success() {
                    return Err(err(format!("{prog} exited with {}", out.status)));
                }
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            }
        };
        if value.is_empty() {
            return Err(err("it is empty".to_owned()));
        }
        Ok(Revealed(value))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
