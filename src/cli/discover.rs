//! Where the config file is looked for, and `mailticket init`'s output.
//!
//! Order: `--config PATH`, else `$MAILTICKET_CONFIG` (both must exist: the user named them),
//! else the first of these that exists: `./mailticket.toml`,
//! `$XDG_CONFIG_HOME/mailticket/config.toml` (`~/.config/mailticket/config.toml` when
//! `XDG_CONFIG_HOME` is unset or not absolute), `/etc/mailticket/mailticket.toml`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::Usage;

/// The system-wide config file, the last place looked at.
pub const SYSTEM_CONFIG: &str = "/etc/mailticket/mailticket.toml";

/// The config file to use (one the user named need not exist: loading it says so), or `None`
/// when no file was named and none of the usual places holds one.
pub fn config_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MAILTICKET_CONFIG").map(PathBuf::from))
    {
        return Some(p);
    }
    candidates(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .into_iter()
    .find(|p| p.is_file())
}

/// The places looked at, in order, when no file is named.
pub fn candidates(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("mailticket.toml")];
    // The XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    let user = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".config"))
        });
    if let Some(dir) = user {
        out.push(dir.join("mailticket").join("config.toml"));
    }
    out.push(PathBuf::from(SYSTEM_CONFIG));
    out
}

/// The places looked at, for a message: "./mailticket.toml, ~/.config/…, /etc/…".
pub fn searched() -> String {
    let list: Vec<String> = candidates(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .iter()
    .map(|p| p.display().to_string())
    .collect();
    list.join(", ")
}

/// `mailticket init [PATH]`: writes the sample config to PATH (creating its folders), or to
/// standard output when PATH is `-`.
pub fn init(path: Option<&Path>, force: bool) -> anyhow::Result<u8> {
    let path = path.unwrap_or(Path::new("mailticket.toml"));
    if path == Path::new("-") {
        std::io::Write::write_all(
            &mut std::io::stdout().lock(),
            mailticket::config::SAMPLE.as_bytes(),
        )?;
        return Ok(0);
    }
    if path.exists() && !force {
        return Err(Usage(format!(
            "{} exists already (use --force to replace it)",
            path.display()
        ))
        .into());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the folder {}", dir.display()))?;
    }
    std::fs::write(path, mailticket::config::SAMPLE)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "wrote a sample config");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_in_the_working_directory_then_xdg_then_etc() {
        let c = candidates(Some("/x/cfg".into()), Some("/home/a".into()));
        assert_eq!(
            c,
            [
                PathBuf::from("mailticket.toml"),
                PathBuf::from("/x/cfg/mailticket/config.toml"),
                PathBuf::from(SYSTEM_CONFIG),
            ]
        );
    }

    #[test]
    fn falls_back_to_dot_config_and_ignores_relative_paths() {
        let c = candidates(Some("relative".into()), Some("/home/a".into()));
        assert_eq!(
            c[1],
            PathBuf::from("/home/a/.config/mailticket/config.toml")
        );
        let c = candidates(None, None);
        assert_eq!(
            c,
            [
                PathBuf::from("mailticket.toml"),
                PathBuf::from(SYSTEM_CONFIG)
            ]
        );
    }
}
