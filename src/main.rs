//! The `mailticket` command: parses arguments, installs logging, runs one subcommand and
//! turns its result into an exit status. Errors are printed once, here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    // One crypto provider for every TLS client (IMAP, SMTP, HTTPS): ring. Installing fails
    // only when one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::init_tracing(&args);
    let json_logs = matches!(args.log_format, cli::LogFormat::Json);
    let quiet = args.quiet > 0;
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let code = cli::exit_code(&e);
            // Another run holding the lock is the everyday case of a cron job that overlaps
            // a long run: with -q it says nothing, so cron mails nothing.
            if quiet && code == cli::EXIT_LOCKED {
                return ExitCode::from(code);
            }
            let text = mailticket::error::chain_text(e.as_ref());
            if json_logs {
                tracing::error!(error = text, exit = code, "failed");
            } else {
                eprintln!("mailticket: error: {text}");
            }
            ExitCode::from(code)
        }
    }
}
