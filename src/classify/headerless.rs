//! The families of rules for machines that send no automatic header: feedback and abuse
//! reports, text bounces, list managers, challenge-response mail, and the bulk evidence that
//! only withholds the acknowledgement. Called by [`super::classify`] in its order; each adds
//! to [`Signals`] with a reason per rule.

use super::{NDR_SUBJECTS, Signals, local_part, shapes, subject_opens_with};
use crate::message::{ParsedMessage, mailbox_in};

impl Signals {
    /// Feedback-loop and abuse reports: ARF (RFC 5965), a provider's abuse desk attaching the
    /// complained-about mail, and a cloud mail service's JSON notification (SES via SNS).
    /// Reports are machine mail: an automatic reply, or a bounce when the notification is one.
    pub(super) fn feedback_reports(&mut self, m: &ParsedMessage) {
        if m.content_type == "multipart/report" && m.report_type == "feedback-report" {
            self.auto
                .push("multipart/report; report-type=feedback-report".into());
        } else if m.part_types.iter().any(|t| t == "message/feedback-report") {
            self.auto.push("message/feedback-report part".into());
        }
        let from = m.from_addr();
        let attached = m
            .original
            .as_ref()
            .is_some_and(|o| o.source == "message/rfc822");
        let mentions =
            || shapes::mentions_complaint(&m.subject) || shapes::mentions_complaint(&m.text);
        if attached && shapes::abuse_desk(local_part(from), mentions()) {
            self.auto.push(format!(
                "abuse report from {from} with the original attached"
            ));
        }
        let sns = m.subject.eq_ignore_ascii_case("aws notification message")
            || from.ends_with(".amazonaws.com");
        if let Some(t) = sns
            .then(|| shapes::sns_notification_type(&m.text))
            .flatten()
        {
            let r = format!("aws notification: {t}");
            if t.eq_ignore_ascii_case("bounce") {
                self.bounce.push(r);
            } else {
                self.auto.push(r);
            }
        }
    }

    /// Bounces in plain text from mail systems under other names: delivery-failure text is a
    /// weak signal (for a non-delivery subject); a mail-system sender with the original
    /// attached, with a null return path, or (by its display name) with such text is a bounce;
    /// so is a message without a subject that attaches the original with any of these signs.
    pub(super) fn text_bounces(&mut self, m: &ParsedMessage) {
        // The text is read only where it can count: a non-delivery subject, a mail system,
        // a null return path, no subject.
        let may_count = self.daemon.is_some()
            || self.daemon_name.is_some()
            || self.null_sender
            || m.subject.is_empty()
            || subject_opens_with(&m.subject, NDR_SUBJECTS).is_some();
        let text = may_count
            .then(|| shapes::bounce_text(&m.text))
            .flatten()
            .map(|p| format!("text: {p}"));
        if let Some(t) = &text {
            self.weak.push(t.clone());
        }
        if !self.bounce.is_empty() {
            return;
        }
        let attached = m
            .original
            .as_ref()
            .map(|o| format!("original message in {}", o.source));
        let system = self.daemon.clone().or_else(|| self.daemon_name.clone());
        if let Some(sys) = system {
            let second = attached
                .clone()
                .or_else(|| self.null_sender.then(|| "return-path: <>".to_owned()))
                .or_else(|| text.clone().filter(|_| self.daemon_name.is_some()));
            if let Some(second) = second {
                self.bounce.extend([sys, second]);
                return;
            }
        }
        let returns_own_mail = m.original.as_ref().is_some_and(|o| {
            o.source == "message/rfc822"
                && o.from
                    .as_ref()
                    .is_some_and(|f| m.to.iter().any(|t| t.address == f.address))
        });
        if m.subject.is_empty()
            && let Some(a) = attached
            && (text.is_some() || returns_own_mail || !self.weak.is_empty())
        {
            self.bounce.push(format!("no subject, {a}"));
            self.bounce.extend(text);
            if returns_own_mail {
                self.bounce
                    .push("original message was sent by this message's recipient".into());
            }
        }
    }

    /// Notices of list managers sent without list headers (a rejected post, a loop alert):
    /// from `-owner`, `+owner`, `owner-`, `-request`, `-bounces`, and `-admin` when the
    /// message speaks of a list.
    pub(super) fn list_managers(&mut self, m: &ParsedMessage) {
        let from = m.from_addr();
        let local = local_part(from);
        let about_a_list = local.ends_with("-admin")
            && [m.subject.as_str(), m.text.as_str()].iter().any(|t| {
                let lower = t.to_lowercase();
                lower.contains("list") || lower.contains("moderat")
            });
        if let Some(shape) = shapes::list_manager(local, about_a_list) {
            self.list
                .push(format!("from: list manager ({shape}): {from}"));
        }
    }

    /// Challenge-response verification: the text asks the sender to follow a link to be
    /// added to an allow list. It answers a message automatically: an automatic reply.
    pub(super) fn challenge_response(&mut self, m: &ParsedMessage) {
        if let Some(w) = shapes::challenge_response(&m.text) {
            self.auto
                .push(format!("text: challenge-response verification ({w})"));
        }
    }

    /// What bulk senders and machine notifications leave without RFC 3834 headers: mailing-
    /// service headers (`Feedback-ID`, ...), an unsubscribe link, a bulk-shaped `Sender` that
    /// is not the `From`, a tracker's or monitor's subject tag. It withholds
    /// the acknowledgement only: the sender may still be a person, and the ticket is theirs.
    pub(super) fn bulk_evidence(&mut self, m: &ParsedMessage) {
        if let Some(h) = shapes::bulk_header(|h| m.header(h)) {
            self.blocks.push(format!("bulk: {h}"));
        }
        if shapes::unsubscribe_link(&m.text) {
            self.blocks.push("bulk: unsubscribe link".into());
        }
        // Not the return path: providers give people's mail VERP return paths too.
        if let Some(addr) = m.header("sender").and_then(mailbox_in).map(|b| b.address)
            && addr != m.from_addr()
            && shapes::bulk_sender_address(&addr)
        {
            self.blocks.push(format!("bulk: sender {addr}"));
        }
        if let Some(t) = shapes::tracker_tag(&m.subject) {
            self.blocks.push(format!("bulk: tracker tag {t}"));
        }
    }
}
