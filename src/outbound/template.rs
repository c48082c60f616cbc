//! Acknowledgement templates: minijinja with strict undefined values, compiled and test-rendered
//! when the config is loaded, so a typo or an unknown field is a configuration error at start-up
//! rather than a surprise at send time.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::config::{AckConfig, DEFAULT_ACK_BODY};

/// The fields a template may use.
#[derive(Debug, Clone, Serialize)]
pub struct AckContext {
    /// `ticket.id`, `ticket.subject`, `ticket.tag` (`[#42]`).
    pub ticket: TicketFields,
    /// `customer.name`, `customer.email`.
    pub customer: CustomerFields,
    /// `mailbox.name`, `mailbox.address`, `mailbox.from_name`, `mailbox.signature`.
    pub mailbox: MailboxFields,
    /// `message.date` (RFC 3339), `message.subject`.
    pub message: MessageFields,
}

/// Ticket fields.
#[derive(Debug, Clone, Serialize)]
pub struct TicketFields {
    /// Number.
    pub id: i64,
    /// Subject without reply prefixes.
    pub subject: String,
    /// `[#ID]`.
    pub tag: String,
}

/// Customer fields.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerFields {
    /// Display name, possibly empty.
    pub name: String,
    /// Address.
    pub email: String,
}

/// Mailbox fields.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxFields {
    /// Config name (internal: for templates that need it, not for customers' eyes).
    pub name: String,
    /// Our address.
    pub address: String,
    /// The display name of our From (may be empty).
    pub from_name: String,
    /// The sign-off: `signature`, else the From's display name, else its address.
    pub signature: String,
}

/// Fields of the customer's message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageFields {
    /// Its Date, RFC 3339.
    pub date: String,
    /// Its subject as sent.
    pub subject: String,
}

impl AckContext {
    /// A context with every field set, for checking templates.
    pub fn sample() -> AckContext {
        AckContext {
            ticket: TicketFields {
                id: 42,
                subject: "Printer".into(),
                tag: "[#42]".into(),
            },
            customer: CustomerFields {
                name: "Anna".into(),
                email: "anna@example.com".into(),
            },
            mailbox: MailboxFields {
                name: "support".into(),
                address: "support@example.com".into(),
                from_name: "Support".into(),
                signature: "Support".into(),
            },
            message: MessageFields {
                date: "2025-01-01T00:00:00Z".into(),
                subject: "Printer".into(),
            },
        }
    }
}

/// The rendered parts of one acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject, one line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body, when configured.
    pub html: Option<String>,
}

/// A template error as one line naming the config key, the line and the expression that
/// failed: "subject, line 1: undefined value `ticket.subjct`".
fn describe(key: &str, e: &minijinja::Error) -> String {
    let mut out = key.to_owned();
    if let Some(line) = e.line() {
        out.push_str(&format!(", line {line}"));
    }
    out.push_str(&format!(": {}", e.kind()));
    let failed = e
        .range()
        .zip(e.template_source())
        .and_then(|(range, source)| source.get(range));
    if let Some(expr) = failed.map(str::trim).filter(|x| !x.is_empty()) {
        out.push_str(&format!(" `{expr}`"));
    }
    if let Some(detail) = e.detail() {
        out.push_str(&format!(" ({detail})"));
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        out.push_str(&format!("; the fields are {}", fields().join(", ")));
    }
    out
}

/// What a template may use (`ticket.id`, ...), read off the sample context.
fn fields() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(AckContext::sample()) {
        walk("", &v, &mut out);
    }
    out
}

/// The compiled `[ack]` templates.
pub struct AckTemplates {
    env: Environment<'static>,
    has_html: bool,
}

impl std::fmt::Debug for AckTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTemplates")
            .field("has_html", &self.has_html)
            .finish()
    }
}

impl AckTemplates {
    /// Compiles the templates and renders them once with [`AckContext::sample`].
    pub fn compile(c: &AckConfig) -> Result<AckTemplates, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let body = c
            .body
            .clone()
            .unwrap_or_else(|| DEFAULT_ACK_BODY.to_owned());
        env.add_template_owned("subject", c.subject.clone())
            .map_err(|e| describe("subject", &e))?;
        env.add_template_owned("body", body)
            .map_err(|e| describe("body", &e))?;
        if let Some(html) = &c.html_body {
            env.add_template_owned("html", html.clone())
                .map_err(|e| describe("html-body", &e))?;
        }
        let t = AckTemplates {
            env,
            has_html: c.html_body.is_some(),
        };
        t.render(&AckContext::sample())?;
        Ok(t)
    }

    /// Renders all parts.
    pub fn render(&self, ctx: &AckContext) -> Result<Rendered, String> {
        let get = |name: &str| -> Result<String, String> {
            self.env
                .get_template(name)
                .and_then(|t| t.render(ctx))
                .map_err(|e| describe(if name == "html" { "html-body" } else { name }, &e))
        };
        let subject = get("subject")?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let text = get("body")?;
        let html = if self.has_html {
            Some(get("html")?)
        } else {
            None
        };
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(subject: &str, body: Option<&str>) -> AckConfig {
        AckConfig {
            subject: subject.into(),
            body: body.map(Into::into),
            ..AckConfig::default()
        }
    }

    #[test]
    fn default_templates_render() {
        let t = AckTemplates::compile(&AckConfig::default()).unwrap();
        let r = t.render(&AckContext::sample()).unwrap();
        assert_eq!(r.subject, "[#42] Printer");
        assert!(r.text.contains("Hello Anna"), "{}", r.text);
        assert!(r.text.contains("[#42]"));
    }

    #[test]
    fn unknown_fields_and_syntax_errors_are_caught_early() {
        let e = AckTemplates::compile(&ack("{{ ticket.number }}", None)).unwrap_err();
        assert!(e.contains("subject"), "{e}");
        let e = AckTemplates::compile(&ack("ok", Some("{% if %}"))).unwrap_err();
        assert!(e.contains("body"), "{e}");
        let e = AckTemplates::compile(&ack("ok", Some("{{ custmer.name }}"))).unwrap_err();
        assert!(e.contains("body"), "{e}");
        let e = AckTemplates::compile(&ack("[#{{ ticket.id }}] {{ ticket.subjct }}", None))
            .unwrap_err();
        assert!(
            e.starts_with("subject, line 1: undefined value `ticket.subjct`"),
            "{e}"
        );
        assert!(e.contains("ticket.subject"), "the fields are listed: {e}");
        let e = AckTemplates::compile(&ack("ok", Some("Hi\n\n{{ customer.nmae }}"))).unwrap_err();
        assert!(
            e.starts_with("body, line 3: undefined value `customer.nmae`"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_template_is_a_config_error_naming_the_file() {
        let path = std::path::Path::new("/etc/mailticket/mailticket.toml");
        let smtp = "[smtp]\nhost = 'h'\nfrom = 'a@b.c'\n";
        let config = crate::config::Config::parse(
            &format!("{smtp}[ack]\nenabled = true\nsubject = '{{{{ ticket.nope }}}}'\n"),
            path,
        )
        .unwrap();
        let e = crate::outbound::AckPlan::from_config(&config)
            .err()
            .unwrap();
        assert!(e.is_config(), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("[ack]") && e.contains("subject"), "{e}");
        assert!(e.contains("/etc/mailticket/mailticket.toml"), "{e}");
    }
}
