//! `mailticket completions SHELL` and `mailticket man`: shell completions and the man page,
//! generated from the same argument definitions the parser uses, so they never drift.

use clap::CommandFactory as _;

use super::Args;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `a.shell` on stdout.
pub fn completions(a: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Args::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "mailticket", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write a page for every command into this folder instead (mailticket.1,
    /// mailticket-sync.1, mailticket-outbox-send.1, ...), for `man mailticket-sync`
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// Writes the man page (roff, section 1) on stdout: its SUBCOMMANDS section lists every
/// command. With `--dir`, a page per command, its own options in it, into that folder.
pub fn man(a: &ManArgs) -> anyhow::Result<u8> {
    if let Some(dir) = &a.dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        clap_mangen::generate_to(Args::command(), dir)
            .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))?;
        return Ok(0);
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command()).render(&mut out)?;
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(0)
}
