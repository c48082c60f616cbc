//! A real SMTP server for the outbound tests: `tests/env/smtp-sink` (aiosmtpd) on free loopback
//! ports, storing every message it accepts as `NNNNNN.eml` with its envelope in `NNNNNN.json`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{OAuth2Server, free_port, script, unique_dir};

pub struct Sink {
    pub dir: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    /// Knobs for tests/env/smtp-sink (`SMTP_OAUTH2`, ...), kept across restarts.
    env: Vec<(String, String)>,
}

/// One message the sink accepted.
pub struct Received {
    pub raw: String,
    pub envelope: Value,
}

impl Received {
    /// The first value of header NAME (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or("");
        let head = head.split("\n\n").next().unwrap_or(head);
        let mut found: Option<String> = None;
        for line in head.lines() {
            let line = line.trim_end_matches('\r');
            if line.starts_with([' ', '\t']) {
                if let Some(v) = found.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                found = Some(v.trim().to_owned());
            }
        }
        found
    }
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_with(Vec::new())
    }

    /// A sink that also offers AUTH XOAUTH2 and OAUTHBEARER and accepts O's access tokens: user
    /// tokens whose `sub` is the login name and which have `SMTP.Send`, app-only tokens with
    /// `SMTP.SendAsApp` (as anyone). The message's `.json` then has `auth_oauth2`.
    pub fn start_oauth2(o: &OAuth2Server) -> Sink {
        let mut env = o.env();
        env.push(("SMTP_OAUTH2".into(), "1".into()));
        Sink::start_with(env)
    }

    /// A sink whose AUTH accepts USERS (`"user:password ..."`) instead of support's.
    pub fn start_users(users: &str) -> Sink {
        Sink::start_with(vec![("SMTP_USERS".into(), users.into())])
    }

    fn start_with(env: Vec<(String, String)>) -> Sink {
        let mut sink = Sink {
            dir: unique_dir("mts"),
            port: 0,
            tls_port: 0,
            env,
        };
        for _ in 0..5 {
            sink.port = free_port();
            sink.tls_port = free_port();
            let out = sink.script(&["start"]).output().unwrap();
            if out.status.success() {
                return sink;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(err.contains("in use"), "smtp-sink start failed:\n{err}");
        }
        panic!("smtp-sink start: no free ports after 5 tries");
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        // SMTP_OAUTH2_* and OAUTH2_* (e.g. from a sourced env file) would change the sink
        crate::harness::scrub_env(&mut cmd, &["SMTP_OAUTH2", "OAUTH2_"]);
        cmd.arg(script("smtp-sink"))
            .arg("-d")
            .arg(&self.dir)
            .args(args)
            .env("SMTP_PORT", self.port.to_string())
            .env("SMTPS_PORT", self.tls_port.to_string())
            .env_remove("SMTP_SINK_DIR")
            .env_remove("SMTP_USERS")
            .env_remove("SMTP_OAUTH2")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    pub fn stop(&self) {
        let _ = self.script(&["stop"]).status();
    }

    pub fn restart(&self) {
        let out = self.script(&["start"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// Every accepted message, in order.
    pub fn messages(&self) -> Vec<Received> {
        let dir = self.dir.join("messages");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "json"));
        names.sort();
        names
            .iter()
            .map(|j| Received {
                raw: std::fs::read_to_string(j.with_extension("eml")).unwrap(),
                envelope: serde_json::from_str(&std::fs::read_to_string(j).unwrap()).unwrap(),
            })
            .collect()
    }

    /// The `[smtp]` table: STARTTLS on the plain port, trusting the sink's CA.
    pub fn smtp_toml(&self) -> String {
        format!(
            "[smtp]\nhost = \"localhost\"\nport = {}\ntls = \"starttls\"\nca-file = {}\n\
             username = \"support\"\npassword = \"support-pass\"\n\
             from = \"Support <support@example.com>\"\ntimeout = 20\n",
            self.port,
            crate::harness::quoted(&self.ca_file().to_string_lossy())
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
