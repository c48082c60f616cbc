//! `mailticket oauth2 login --mailbox NAME`: the device-code sign-in that stores a first
//! refresh token; `mailticket oauth2 status`: each account's token state, offline.

use mailticket::oauth2::Tokens;

use super::{Ctx, Usage, print_json};

#[derive(Debug, clap::Args)]
pub struct OAuth2Args {
    #[command(subcommand)]
    pub command: OAuth2Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum OAuth2Command {
    /// Sign in with the device code flow and store the refresh token
    Login {
        /// The mailbox to sign in for
        #[arg(long, value_name = "NAME", required_unless_present = "smtp")]
        mailbox: Option<String>,
        /// Sign in for [smtp] (when it has an oauth2 table of its own)
        #[arg(long, conflicts_with = "mailbox")]
        smtp: bool,
    },
    /// Show each OAuth2 account's token state (nothing is contacted)
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &Ctx, a: &OAuth2Args) -> anyhow::Result<u8> {
    ctx.require_config()?;
    match &a.command {
        OAuth2Command::Login { mailbox, smtp } => login(ctx, mailbox.as_deref(), *smtp),
        OAuth2Command::Status { json } => status(ctx, *json),
    }
}

fn login(ctx: &Ctx, mailbox: Option<&str>, smtp: bool) -> anyhow::Result<u8> {
    let source = if smtp {
        let tokens = Tokens::new(&ctx.config, &ctx.store, &[], true)?;
        match tokens.smtp(&ctx.config)? {
            Some(mailticket::oauth2::Credentials::OAuth2(s)) => s,
            _ => return Err(Usage("[smtp] does not use OAuth2".into()).into()),
        }
    } else {
        let name = mailbox.unwrap_or_default();
        let chosen = ctx.chosen_mailboxes(&[name.to_owned()])?;
        if !chosen[0].uses_oauth2() {
            return Err(Usage(format!(
                "mailbox {name} does not use OAuth2 (auth = \"xoauth2\" or \"oauthbearer\")"
            ))
            .into());
        }
        let tokens = Tokens::new(&ctx.config, &ctx.store, &chosen, false)?;
        tokens
            .source_of(name)
            .ok_or_else(|| Usage(format!("mailbox {name} has no token source")))?
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(source.device_login(|p| {
        let _ = print_prompt(source.label(), p);
    }))?;
    outln!(
        "Signed in: refresh token stored for {}{}.",
        source.label(),
        done.scope
            .as_deref()
            .map(|s| format!(" (scopes: {s})"))
            .unwrap_or_default()
    );
    Ok(0)
}

fn print_prompt(label: &str, p: &mailticket::oauth2::device::Prompt) -> std::io::Result<()> {
    outln!("To sign in {label}:");
    match &p.message {
        Some(m) => outln!("  {m}"),
        None => outln!(
            "  open {} in a browser and enter the code {}",
            p.verification_uri,
            p.user_code
        ),
    }
    if let Some(u) = &p.verification_uri_complete {
        outln!("  (or open {u})");
    }
    outln!(
        "  Code: {}   (valid for {} min; waiting...)",
        p.user_code,
        (p.expires_in + 59) / 60
    );
    Ok(())
}

fn status(ctx: &Ctx, json: bool) -> anyhow::Result<u8> {
    // Reads no secret: the state is in the store and the config.
    let tokens = Tokens::offline(&ctx.config, &ctx.store)?;
    let mut rows = Vec::new();
    for mb in &ctx.config.mailboxes {
        for s in [tokens.source_of(&mb.name), tokens.smtp_source_of(&mb.name)]
            .into_iter()
            .flatten()
        {
            rows.push((s.label().to_owned(), s.state()));
        }
    }
    if ctx.config.smtp.as_ref().is_some_and(|s| s.oauth2.is_some())
        && let Ok(Some(mailticket::oauth2::Credentials::OAuth2(s))) = tokens.smtp(&ctx.config)
    {
        rows.push((s.label().to_owned(), s.state()));
    }
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(label, st)| {
                let mut v = serde_json::to_value(st).unwrap_or_default();
                v["account"] = serde_json::Value::String(label.clone());
                v
            })
            .collect();
        print_json(&list)?;
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no OAuth2 accounts configured");
    }
    for (label, st) in rows {
        outln!("{label}: {} from {}", st.source, st.from);
        outln!(
            "  access token expires: {}",
            st.expires.as_deref().unwrap_or("-")
        );
        outln!(
            "  last refresh: {} ({} refreshes), refresh token stored: {}",
            st.last_refresh.as_deref().unwrap_or("-"),
            st.refreshes,
            if st.has_refresh_token { "yes" } else { "no" }
        );
        outln!("  scopes: {}", st.scope.as_deref().unwrap_or("-"));
        if let Some(e) = &st.last_error {
            outln!("  LAST ERROR: {e}");
        }
    }
    Ok(0)
}
