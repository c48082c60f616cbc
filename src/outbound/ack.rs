//! The acknowledgement policy: whether a message that just opened a ticket is answered, and
//! the mail that answers it. Pure decisions over the message, its final verdict and the
//! sender's history (which the pipeline reads in the message's transaction); the store only
//! records the outcome, queued or skipped with its reasons.

use lettre::message::Mailbox;

use super::template::{AckContext, CustomerFields, MailboxFields, MessageFields, TicketFields};
use super::{AckPlan, Compose, compose, parse_mailbox, short_subject};
use crate::classify::Classification;
use crate::error::{Error, Result};
use crate::message::ParsedMessage;
use crate::store::{OutboxKind, Outgoing};

/// What the store knows about a sender that the policy needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckHistory {
    /// The address bounced recently (see `[classify] undeliverable-days`).
    pub undeliverable: bool,
    /// Acknowledgements queued or sent to it in the last hour.
    pub last_hour: u32,
    /// ... and in the last day.
    pub last_day: u32,
}

/// The ticket a message opened, as the acknowledgement shows it.
#[derive(Debug, Clone, Copy)]
pub struct AckTicket<'a> {
    /// Its number.
    pub id: i64,
    /// Its subject (without prefixes or tag).
    pub subject: &'a str,
    /// Its subject tag (`[#42]`, see [`crate::thread::tag_text`]).
    pub tag: &'a str,
    /// The mailbox it came in on.
    pub mailbox: &'a str,
}

/// The policy's answer.
#[derive(Debug)]
pub enum AckDecision {
    /// Send this.
    Queue(Box<Outgoing>),
    /// Do not answer `to`, for these reasons.
    Skip {
        /// The sender's address.
        to: String,
        /// Why not.
        reasons: Vec<String>,
    },
}

/// Decides on the acknowledgement of `p`, which just opened `ticket`, on its final verdict
/// and its sender's history; composes it when it goes out. `message_id` is our Message-ID
/// for it. Fails only when a template cannot be rendered.
pub fn decide(
    plan: &AckPlan,
    p: &ParsedMessage,
    verdict: &Classification,
    history: &AckHistory,
    ticket: &AckTicket<'_>,
    message_id: &str,
    now: i64,
) -> Result<AckDecision> {
    let customer = p.reply_address().cloned().unwrap_or_default();
    let mut why = reasons_not_to(plan, p, verdict, history, now);
    let to = recipient(&customer.name, &customer.address);
    if to.is_none() {
        why.push(format!(
            "sender address {:?} cannot be written to",
            customer.address
        ));
    }
    let Some(to) = to.filter(|_| why.is_empty()) else {
        return Ok(AckDecision::Skip {
            to: customer.address,
            reasons: why,
        });
    };
    let me = plan.identity(ticket.mailbox);
    let ctx = AckContext {
        ticket: TicketFields {
            id: ticket.id,
            subject: short_subject(ticket.subject),
            tag: ticket.tag.to_owned(),
        },
        customer: CustomerFields {
            name: customer.name.clone(),
            email: customer.address,
        },
        mailbox: MailboxFields {
            name: ticket.mailbox.to_owned(),
            address: me.from.email.to_string(),
            from_name: me.from.name.clone().unwrap_or_default(),
            signature: me.signature.clone(),
        },
        message: MessageFields {
            date: crate::time::rfc3339(p.date.unwrap_or(now)),
            subject: short_subject(&p.subject),
        },
    };
    let rendered = me
        .templates
        .render(&ctx)
        .map_err(|e| Error::Compose(format!("[ack] template: {e}")))?;
    let subject = short_subject(&rendered.subject);
    let mut references = p.references.clone();
    references.push(p.message_id.clone());
    let raw = compose(&Compose {
        from: &me.from,
        to: std::slice::from_ref(&to),
        cc: &[],
        subject: &subject,
        text: &rendered.text,
        html: rendered.html.as_deref(),
        message_id,
        in_reply_to: Some(&p.message_id),
        references: &references,
        auto_submitted: true,
    })?;
    Ok(AckDecision::Queue(Box::new(Outgoing {
        kind: OutboxKind::Ack,
        mailbox: ticket.mailbox.to_owned(),
        from: me.from.clone(),
        to: vec![to],
        cc: Vec::new(),
        subject,
        text: rendered.text,
        raw,
        message_id: message_id.to_owned(),
    })))
}

/// Every reason not to answer: the message's own ([`AckPlan::blockers`]), a recent bounce,
/// then the per-sender rate limits (only when nothing else stands in the way).
fn reasons_not_to(
    plan: &AckPlan,
    p: &ParsedMessage,
    verdict: &Classification,
    history: &AckHistory,
    now: i64,
) -> Vec<String> {
    let mut why = plan.blockers(p, verdict, now);
    let address = p.reply_address().map_or("", |a| a.address.as_str());
    if history.undeliverable {
        why.push(format!("{address} bounced recently (undeliverable)"));
    }
    if why.is_empty() {
        if history.last_hour >= plan.per_hour {
            why.push(format!(
                "rate limit: {} acknowledgements to this sender in an hour",
                plan.per_hour
            ));
        } else if history.last_day >= plan.per_day {
            why.push(format!(
                "rate limit: {} acknowledgements to this sender in a day",
                plan.per_day
            ));
        }
    }
    why
}

/// The customer as a recipient: `"Name" <addr>` when the name can be written, else the bare
/// address; `None` when not even that parses.
fn recipient(name: &str, address: &str) -> Option<Mailbox> {
    let named = (!name.is_empty())
        .then(|| format!("\"{}\" <{address}>", name.replace(['"', '\\'], "")))
        .and_then(|s| parse_mailbox(&s));
    named.or_else(|| parse_mailbox(address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Identity, classify};
    use crate::config::Config;
    use crate::message::parse;

    fn plan() -> std::sync::Arc<AckPlan> {
        let config = Config::parse(
            "[smtp]\nhost = \"localhost\"\nusername = \"u\"\npassword = \"p\"\n\
             from = \"Support <support@example.com>\"\n[ack]\nenabled = true\n\
             per-sender-per-hour = 2\nmax-age = 8640000000\n",
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        AckPlan::from_config(&config).unwrap().unwrap()
    }

    fn judge(raw: &str) -> (ParsedMessage, Classification) {
        let p = parse(raw.as_bytes()).unwrap();
        let me = Identity {
            addresses: vec!["support@example.com".into()],
        };
        let c = classify(&p, &me);
        (p, c)
    }

    const ANNA: &str = "From: Anna <anna@customer.example>\r\nTo: support@example.com\r\n\
        Subject: Printer\r\nMessage-ID: <a1@customer.example>\r\n\r\nIt jams.\r\n";

    fn ticket() -> AckTicket<'static> {
        AckTicket {
            id: 7,
            subject: "Printer",
            tag: "[Ticket#7]",
            mailbox: "support",
        }
    }

    #[test]
    fn a_person_gets_a_threaded_acknowledgement_with_our_tag() {
        let (p, c) = judge(ANNA);
        let d = decide(
            &plan(),
            &p,
            &c,
            &AckHistory::default(),
            &ticket(),
            "mt.7.x@example.com",
            0,
        );
        let AckDecision::Queue(out) = d.unwrap() else {
            panic!("not queued")
        };
        assert_eq!(out.kind, OutboxKind::Ack);
        assert!(out.subject.contains("[Ticket#7]"), "{}", out.subject);
        assert_eq!(out.to[0].email.to_string(), "anna@customer.example");
        let raw = String::from_utf8_lossy(&out.raw);
        assert!(raw.contains("In-Reply-To: <a1@customer.example>"), "{raw}");
        assert!(raw.contains("Auto-Submitted: auto-replied"), "{raw}");
    }

    #[test]
    fn machines_bounced_senders_and_busy_senders_are_skipped_with_reasons() {
        let plan = plan();
        let skipped = |raw: &str, h: AckHistory| {
            let (p, c) = judge(raw);
            match decide(&plan, &p, &c, &h, &ticket(), "id@example.com", 0).unwrap() {
                AckDecision::Skip { reasons, .. } => reasons.join("; "),
                AckDecision::Queue(_) => panic!("queued: {raw}"),
            }
        };
        let oof = ANNA.replace("\r\n\r\n", "\r\nAuto-Submitted: auto-replied\r\n\r\n");
        assert!(skipped(&oof, AckHistory::default()).contains("kind is auto_reply"));
        let bounced = AckHistory {
            undeliverable: true,
            ..AckHistory::default()
        };
        assert!(skipped(ANNA, bounced).contains("bounced recently"));
        let busy = AckHistory {
            last_hour: 2,
            ..AckHistory::default()
        };
        assert!(skipped(ANNA, busy).contains("rate limit: 2 acknowledgements"));
        let noreply = ANNA.replace("anna@customer.example>", "no-reply@customer.example>");
        assert!(skipped(&noreply, AckHistory::default()).contains("no-reply"));
    }
}
