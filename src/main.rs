//! The `mailticket` command: parses arguments, installs logging, runs one subcommand and
//! turns its result into an exit status. Errors are printed once, here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_tracing(&args);
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = cli::exit_code(&e);
            eprintln!("mailticket: error: {e:#}");
            ExitCode::from(code)
        }
    }
}
