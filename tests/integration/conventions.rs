//! Conventions people expect of a command-line tool: completions, a man page, `--help` that
//! names the environment, config discovery.

use crate::harness::{Workdir, mailticket_cmd, run};

#[test]
fn completions_for_bash_zsh_and_fish_name_the_subcommands() {
    let wd = Workdir::new();
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = mailticket_cmd(&wd.dir);
        cmd.args(["completions", shell]);
        let out = run(cmd, None).success();
        for sub in ["sync", "watch", "tickets", "search", "completions"] {
            assert!(
                out.stdout.contains(sub),
                "{shell} completions do not mention {sub}: {out:?}"
            );
        }
        assert!(out.stdout.contains("mailticket"), "{out:?}");
    }
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.args(["completions", "tcsh"]);
    run(cmd, None).code(2);
}

#[test]
fn the_man_page_is_roff_and_lists_the_commands() {
    let wd = Workdir::new();
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("man");
    let out = run(cmd, None).success();
    // clap_mangen puts two string definitions (the quote character) before the title line
    let first = out
        .stdout
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"));
    assert!(
        first.is_some_and(|l| l.starts_with(".TH mailticket 1")),
        "{out:?}"
    );
    for sub in ["sync", "watch", "doctor", "MAILTICKET_LOG"] {
        assert!(out.stdout.contains(sub), "man page lacks {sub}: {out:?}");
    }
}

/// `man --dir` writes a page per command, each with its own options, for `man
/// mailticket-sync`; the folder is created.
#[test]
fn man_dir_writes_a_page_per_command_with_its_options() {
    let wd = Workdir::new();
    let dir = wd.path("share/man/man1");
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("man").arg("--dir").arg(&dir);
    run(cmd, None).success();
    let page = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert!(page("mailticket.1").contains(".TH mailticket 1"));
    // Each page has its command's own options: sync's dry run is not the tickets list's.
    let sync = page("mailticket-sync.1");
    assert!(sync.contains(".TH mailticket-sync 1"), "{sync}");
    assert!(sync.contains("dry\\-run"), "{sync}");
    assert!(!page("mailticket-tickets.1").contains("dry\\-run"));
    for (file, title) in [
        ("mailticket-watch.1", "mailticket-watch"),
        (
            "mailticket-quarantine-retry.1",
            "mailticket-quarantine-retry",
        ),
    ] {
        assert!(page(file).contains(&format!(".TH {title} 1")), "{file}");
    }
}

#[test]
fn help_names_the_environment_variables() {
    let wd = Workdir::new();
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--help");
    let out = run(cmd, None).success();
    for var in ["MAILTICKET_LOG", "MAILTICKET_CONFIG", "NO_COLOR"] {
        assert!(out.stdout.contains(var), "--help lacks {var}: {out:?}");
    }
}

/// The sample mailbox in `examples/`.
fn sample_mbox() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample.mbox")
}

/// A config whose store is DB, written to PATH (folders created).
fn write_config_for(path: &std::path::Path, db: &std::path::Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = format!(
        "[store]\npath = {}\n",
        crate::harness::quoted(&db.to_string_lossy())
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_config_is_found_in_xdg_config_home_after_the_working_directory() {
    let wd = Workdir::new();
    let xdg = wd.path(".xdg-config/mailticket/config.toml");
    write_config_for(&xdg, &wd.path("xdg.db"));
    let import = |wd: &Workdir| {
        let mut cmd = mailticket_cmd(&wd.dir);
        cmd.arg("import").arg(sample_mbox());
        run(cmd, None).success();
    };
    import(&wd);
    assert!(wd.path("xdg.db").exists(), "the XDG config was not used");
    assert!(!wd.db().exists());

    // ./mailticket.toml comes first
    write_config_for(&wd.config(), &wd.path("cwd.db"));
    import(&wd);
    assert!(wd.path("cwd.db").exists(), "./mailticket.toml was not used");

    // an error in the file found names that file
    std::fs::remove_file(wd.config()).unwrap();
    std::fs::write(&xdg, "[store]\npaht = \"x.db\"\n").unwrap();
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.args(["tickets"]);
    let out = run(cmd, None).code(2);
    out.stderr_mentions(&[&xdg.to_string_lossy(), "paht"]);
}

#[test]
fn without_a_config_the_error_lists_the_places_looked_at() {
    let wd = Workdir::new();
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.args(["sync"]);
    let out = run(cmd, None).code(2);
    out.stderr_mentions(&[
        "mailticket.toml",
        &wd.path(".xdg-config/mailticket/config.toml")
            .to_string_lossy(),
        "/etc/mailticket/mailticket.toml",
    ]);
}

#[test]
fn init_creates_folders_and_writes_to_stdout_for_a_dash() {
    let wd = Workdir::new();
    let path = wd.path("deep/er/mailticket.toml");
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("init").arg(&path);
    run(cmd, None).success();
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.contains("[[mailbox]]"), "{written}");

    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.args(["init", "-"]);
    let out = run(cmd, None).success();
    assert_eq!(out.stdout, written);
    assert!(!wd.path("-").exists(), "`init -` wrote a file named -");
}

/// The ids of the tickets a `--json` listing printed.
fn ids(out: &crate::harness::Run) -> Vec<u64> {
    let v = out.json();
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {out:?}"))
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

/// A store (`--db`, no config) holding the tickets of `examples/sample.mbox`.
fn sample_imported() -> Workdir {
    let wd = Workdir::new();
    let mut cmd = mailticket_cmd(&wd.dir);
    cmd.arg("--db")
        .arg(wd.db())
        .arg("import")
        .arg(sample_mbox());
    run(cmd, None).success();
    wd
}

#[test]
fn tickets_filters_search_and_the_kind_column() {
    let wd = sample_imported();
    let db = |args: &[&str]| wd.mailticket_db(args, None).success();
    // 5 tickets: 1 anna (2 messages), 2 bruno, 3 carla's auto-reply, 4 a bounce (closed),
    // 5 kenji
    assert_eq!(ids(&db(&["tickets", "--status", "all", "--json"])).len(), 5);
    let kinds = db(&["tickets", "--status", "all", "--json"]).json();
    for t in kinds.as_array().unwrap() {
        let want = match t["id"].as_u64().unwrap() {
            3 => "auto_reply",
            4 => "bounce",
            _ => "normal",
        };
        assert_eq!(t["kind"], want, "{t}");
    }
    let all = ["--status", "all", "--json"];
    let with = |extra: &[&str]| ids(&db(&[&["tickets"][..], &all, extra].concat()));
    assert_eq!(with(&["--kind", "bounce"]), [4]);
    assert_eq!(with(&["--kind", "auto-reply"]), [3]);
    assert_eq!(with(&["--customer", "ANNA@"]), [1]);
    assert_eq!(with(&["--customer", "Garcia"]), [2]);
    assert_eq!(with(&["--limit", "2"]).len(), 2);
    assert_eq!(with(&["--since", "2999-01-01"]), Vec::<u64>::new());
    assert_eq!(with(&["--since", "1d"]).len(), 5);
    assert_eq!(with(&["--mailbox", "nowhere"]), Vec::<u64>::new());
    wd.mailticket_db(&["tickets", "--since", "yesterday"], None)
        .code(2)
        .stderr_mentions(&["--since", "yesterday"]);

    // search: subjects and texts, case ignored, LIKE's wildcards taken literally
    let mut found = ids(&db(&["search", "PRINTER", "--json"]));
    found.sort_unstable();
    assert_eq!(found, [1, 3]);
    assert_eq!(ids(&db(&["search", "INV-2025-0042", "--json"])), [2]);
    // only in a body
    assert_eq!(ids(&db(&["search", "replaced the toner", "--json"])), [1]);
    assert_eq!(ids(&db(&["search", "%", "--json"])), Vec::<u64>::new());
    assert_eq!(
        ids(&db(&["search", "printer", "--kind", "normal", "--json"])),
        [1]
    );

    // the table has a KIND column
    let table = db(&["tickets", "--status", "all"]).stdout;
    let header = table.lines().next().unwrap();
    assert!(header.contains("KIND"), "{table}");
    let bounce = table.lines().find(|l| l.contains("mailer-daemon")).unwrap();
    assert!(
        bounce.contains("bounce") && bounce.contains("closed"),
        "{table}"
    );
}

/// `date`'s reading of RFC 3339 time T in zone TZ, as FORMAT.
fn date_in(tz: &str, t: &str, format: &str) -> String {
    let out = std::process::Command::new("date")
        .env("TZ", tz)
        .args(["-d", t, format])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn tables_show_local_time_and_json_stays_utc() {
    let wd = sample_imported();
    let in_zone = |tz: &str, args: &[&str]| {
        let mut cmd = mailticket_cmd(&wd.dir);
        cmd.env("TZ", tz).arg("--db").arg(wd.db()).args(args);
        run(cmd, None).success()
    };
    for tz in ["UTC", "Asia/Tokyo", "America/New_York"] {
        let json = in_zone(tz, &["show", "1", "--json"]).json();
        let updated = json["updated_at"].as_str().unwrap().to_owned();
        assert!(
            updated.ends_with('Z'),
            "JSON is UTC whatever TZ says: {updated}"
        );
        let table = in_zone(tz, &["tickets", "--status", "all"]).stdout;
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .unwrap();
        let want = date_in(tz, &updated, "+%Y-%m-%d %H:%M");
        assert!(row.contains(&want), "{tz}: {want} not in {row}");
        let shown = in_zone(tz, &["show", "1"]).stdout;
        let want = date_in(tz, &updated, "+%Y-%m-%d %H:%M:%S %:z");
        assert!(
            shown.contains(&format!("Updated: {want}")),
            "{tz}: {want} not in {shown}"
        );
    }
}
