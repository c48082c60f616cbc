//! The ticket filters `tickets` and `search` share, `mailticket search TEXT`, and the ticket
//! table both print.

use mailticket::classify::Kind;
use mailticket::store::view::ticket_json;
use mailticket::store::{TicketFilter, TicketRow, TicketStatus};

use super::{Ctx, print_json};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatusFilter {
    Open,
    Closed,
    All,
}

/// A ticket's kind, as the command line spells it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Normal,
    #[value(name = "auto_reply", alias = "auto-reply")]
    AutoReply,
    Bounce,
    List,
    Loop,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Normal => Kind::Normal,
            KindArg::AutoReply => Kind::AutoReply,
            KindArg::Bounce => Kind::Bounce,
            KindArg::List => Kind::List,
            KindArg::Loop => Kind::Loop,
        }
    }
}

/// The filters of `tickets` and `search`.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only tickets that came in on this mailbox
    #[arg(long, value_name = "NAME")]
    pub mailbox: Option<String>,
    /// Only tickets whose customer's address or name contains TEXT
    #[arg(long, value_name = "TEXT")]
    pub customer: Option<String>,
    /// Only tickets opened by a message of this kind
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only tickets active since: a date (2025-01-31, UTC), an RFC 3339 time, or a time ago
    /// (90m, 24h, 7d)
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<i64>,
    /// At most N tickets, the most recently active
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

impl FilterArgs {
    /// The store's filter for these arguments and `status`.
    pub fn filter(&self, status: StatusFilter, text: Option<&str>) -> TicketFilter {
        TicketFilter {
            status: match status {
                StatusFilter::Open => Some(TicketStatus::Open),
                StatusFilter::Closed => Some(TicketStatus::Closed),
                StatusFilter::All => None,
            },
            mailbox: self.mailbox.clone(),
            customer: self.customer.clone(),
            kind: self.kind.map(Kind::from),
            since: self.since,
            text: text.map(str::to_owned),
            limit: self.limit,
        }
    }
}

/// `--since`: a duration ago, a date, or an RFC 3339 time, as Unix seconds.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Some(ago) = mailticket::config::parse_duration(s) {
        return Ok(mailticket::time::now().saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX)));
    }
    mailticket::time::parse_rfc3339(s).ok_or_else(|| {
        format!("{s:?} is neither a date (2025-01-31), an RFC 3339 time nor a time ago (7d)")
    })
}

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Text to find in subjects and message texts (ASCII case ignored)
    pub text: String,
    /// Which tickets
    #[arg(long, value_enum, default_value_t = StatusFilter::All)]
    pub status: StatusFilter,
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// `mailticket search TEXT`.
pub fn search(ctx: &Ctx, a: &SearchArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let rows = store.tickets_where(&a.filters.filter(a.status, Some(&a.text)))?;
    print_tickets(&rows, a.filters.json)?;
    Ok(0)
}

/// Prints tickets as JSON or as a table.
pub fn print_tickets(rows: &[TicketRow], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&rows.iter().map(ticket_json).collect::<Vec<_>>());
    }
    outln!(
        "{:>6}  {:<6}  {:<10}  {:<16}  {:>4}  {:<30}  SUBJECT",
        "ID",
        "STATUS",
        "KIND",
        "UPDATED",
        "MSGS",
        "CUSTOMER"
    );
    for t in rows {
        outln!(
            "{:>6}  {:<6}  {:<10}  {:<16}  {:>4}  {}  {}",
            t.id,
            t.status.as_str(),
            t.kind,
            mailticket::time::local(t.updated_at),
            t.messages,
            super::tickets::padded(&t.customer, 30),
            super::tickets::cell(&t.subject, 60)
        );
    }
    Ok(())
}
