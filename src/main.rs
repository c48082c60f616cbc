//! The `mailticket` command: parses arguments, installs logging, runs one subcommand and
//! turns its result into an exit status. Errors are printed once, here.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keep_freed_memory();
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

/// Has glibc's allocator keep the memory a sync frees for the next messages instead of
/// handing it back to the system at once. Its defaults trim a heap as soon as 128 KiB at its
/// top are free and grow it again by 128 KiB at a time: with messages fetched on one thread,
/// parsed on others and freed by the store's, a benchmark sync of 11,000 messages made 3,000
/// to 4,300 `mprotect` calls (each a TLB flush on every core running the process) and 20,000
/// to 28,000 page faults. With these two settings: about 25 calls and 7,000 faults, client
/// CPU -8 %, the same peak RSS (the in-flight byte budget bounds what is live; what is kept
/// is at most what a pass has used). An allocation over 128 KiB still has a mapping of its
/// own, returned when freed (a large message's parts).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    const TRIM_THRESHOLD: libc::c_int = 64 << 20;
    const TOP_PAD: libc::c_int = 16 << 20;
    // SAFETY: `mallopt` only sets allocator parameters, and it runs first in `main`, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
