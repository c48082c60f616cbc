//! IMAP: connect (TLS, STARTTLS, login), select, search, fetch, post-actions and IDLE.
//!
//! This module speaks the protocol and nothing else: it knows UIDs and bytes, not tickets.
//! Every network await runs under the mailbox's timeout (async-imap has none of its own), and
//! every error names the host.

mod connect;
mod guard;
mod idle;
mod session;

pub use connect::{Client, Conn, authenticate, connect, dial, password, secure};
pub use idle::Wake;
pub use session::{FetchedMessage, HEAD_BYTES, Imap, Selected};

/// Formats sorted, deduplicated UIDs as a compact IMAP sequence set (`1:5,7,9:12`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&start) = uids.get(i) {
        let mut end = start;
        while uids.get(i + 1).is_some_and(|&n| n == end.wrapping_add(1)) {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Quotes a mailbox name as an IMAP quoted string.
pub(crate) fn quote(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[7]), "7");
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(
            uid_set(&[u32::MAX - 1, u32::MAX]),
            format!("{}:{}", u32::MAX - 1, u32::MAX)
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a "b"\c"#), r#""a \"b\"\\c""#);
    }
}
