//! A private PostgreSQL cluster per test (`tests/env/pg-server`): initdb + pg_ctl as the
//! `postgres` OS user under /tmp/mtp-PID-N, on a free loopback port, with TLS (its own CA) and
//! SCRAM-SHA-256 for the `mailticket` role that owns the `mailticket` database.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::harness::{
    check, eprint_log_tail_if_panicking, free_port, parse_env_lines, quoted, script, scrub_env,
    unique_dir,
};

/// A private PostgreSQL cluster. Dropping it stops the server (immediate) and removes its
/// directory, data included.
pub struct Postgres {
    pub dir: PathBuf,
    port: u16,
    /// What `pg-server start` printed (`PG_URL`, `PG_BIN`, ...).
    vars: BTreeMap<String, String>,
}

impl Postgres {
    /// The password of the `mailticket` role.
    pub const PASSWORD: &str = "mailticket-pass";

    /// Starts a fresh cluster with an empty `mailticket` database: about 0.8 s (a copy of
    /// pg-server's template cluster; the first start on a machine makes it: +1 s).
    pub fn start() -> Postgres {
        let mut pg = Postgres {
            dir: unique_dir("mtp"),
            port: 0,
            vars: BTreeMap::new(),
        };
        for _ in 0..5 {
            pg.port = free_port();
            // pg_ctl -l sends the server's output to DIR/postgres.log, so pipes are fine here
            let out = pg.script(&["start"]).output().unwrap();
            if out.status.success() {
                pg.vars = parse_env_lines(&String::from_utf8_lossy(&out.stdout));
                return pg;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            // Only a port that someone else took in the meantime is worth another try.
            assert!(err.contains("in use"), "pg-server start failed:\n{err}");
        }
        panic!("pg-server start: no free port after 5 tries");
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        scrub_env(&mut cmd, &["PG"]);
        cmd.arg(script("pg-server"))
            .arg("-d")
            .arg(&self.dir)
            .args(args)
            .env("PG_PORT", self.port.to_string())
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        check(
            &format!("pg-server {args:?}"),
            &self.script(args).output().unwrap(),
        )
    }

    /// `postgres://mailticket@127.0.0.1:PORT/mailticket`: no password in it.
    pub fn url(&self) -> String {
        format!("postgres://mailticket@127.0.0.1:{}/mailticket", self.port)
    }

    /// The password of the role in [`Postgres::url`].
    pub fn password(&self) -> &str {
        Postgres::PASSWORD
    }

    /// The CA that signed the server's certificate (for localhost and 127.0.0.1).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A program of the cluster's PostgreSQL version (`psql`, `pg_dump`, ...).
    pub fn bin(&self, program: &str) -> PathBuf {
        PathBuf::from(&self.vars["PG_BIN"]).join(program)
    }

    /// Runs SQL as the superuser `postgres` over the unix socket in database `mailticket`;
    /// panics on any error. Returns the rows unaligned (`|` between columns), trimmed.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_cmd(sql).output().unwrap();
        check(&format!("psql {sql:?}"), &out).trim().to_owned()
    }

    /// [`Postgres::psql`] in the background, for SQL that holds a lock while the test goes on.
    pub fn psql_spawn(&self, sql: &str) -> std::process::Child {
        self.psql_cmd(sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn psql_cmd(&self, sql: &str) -> Command {
        let mut cmd = Command::new(self.bin("psql"));
        scrub_env(&mut cmd, &["PG"]);
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "mailticket",
            ])
            .args(["-c", sql])
            .stdin(Stdio::null());
        cmd
    }

    /// Stops the server at once (`pg_ctl -m immediate`: connections just break); the data
    /// survives until [`Postgres::start_server`].
    pub fn stop_server(&self) {
        self.run(&["stop"]);
    }

    /// Starts the stopped server again: same port, same data (after crash recovery).
    pub fn start_server(&self) {
        self.run(&["start"]);
    }

    /// [`Postgres::stop_server`] + [`Postgres::start_server`].
    pub fn restart(&self) {
        self.run(&["restart"]);
    }

    /// The `[store]` table of a mailticket config for this cluster, verifying TLS with
    /// [`Postgres::ca_file`].
    pub fn store_toml(&self) -> String {
        format!(
            "[store]\nurl = {}\npassword = {}\nca-file = {}\n",
            quoted(&self.url()),
            quoted(self.password()),
            quoted(&self.ca_file().to_string_lossy())
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        eprint_log_tail_if_panicking(&self.dir.join("postgres.log"), 20);
        let _ = self.script(&["stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
