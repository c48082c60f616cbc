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

/// Writes the man page (roff, section 1) on stdout; its SUBCOMMANDS section lists every
/// command, and `mailticket help COMMAND` shows one command's options.
pub fn man() -> anyhow::Result<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command()).render(&mut out)?;
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(0)
}
