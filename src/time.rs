//! Timestamps: integer Unix seconds in the store, RFC 3339 (UTC) in JSON and logs, local
//! time in the tables people read. chrono (already built for async-imap) does the calendar.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 in UTC, e.g. `2025-01-01T00:00:00Z` (the epoch for an
/// instant beyond chrono's ±262 000 years, which nothing we store comes near).
pub fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Reads `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DDTHH:MM:SS` followed by `Z` or an offset
/// `+HH:MM` / `-HH:MM` (RFC 3339; a space for the `T` and fractions of a second are accepted,
/// as Microsoft Graph writes them), as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() == 10 {
        let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        // chrono takes a 1-digit month: this form is exactly YYYY-MM-DD.
        if !s.bytes().enumerate().all(|(i, c)| match i {
            4 | 7 => c == b'-',
            _ => c.is_ascii_digit(),
        }) {
            return None;
        }
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp())
}

/// Formats Unix seconds in the local time zone for a table: `2025-01-06 10:12`. The zone is
/// `TZ`, else `/etc/localtime`, read by chrono's own TZif reader (no `localtime_r`, so it is
/// sound in a program with threads); without one it is UTC.
pub fn local(ts: i64) -> String {
    local_with(ts, "%Y-%m-%d %H:%M")
}

/// [`local`] with seconds and the UTC offset: `2025-01-06 10:12:00 +01:00`.
pub fn local_full(ts: i64) -> String {
    local_with(ts, "%Y-%m-%d %H:%M:%S %:z")
}

fn local_with(ts: i64, format: &str) -> String {
    match chrono::DateTime::from_timestamp(ts, 0) {
        Some(t) => t.with_timezone(&chrono::Local).format(format).to_string(),
        None => rfc3339(ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ts in [
            0,
            1_735_689_600,
            951_782_400,
            1_709_251_199,
            -1,
            4_102_444_800,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ts)), Some(ts), "{ts}");
        }
        assert_eq!(parse_rfc3339("2025-01-01"), Some(1_735_689_600));
        assert_eq!(
            parse_rfc3339("2025-01-01T01:00:00+01:00"),
            Some(1_735_689_600)
        );
        assert_eq!(
            parse_rfc3339("2024-12-31 19:00:00.5-05:00"),
            Some(1_735_689_600)
        );
        assert_eq!(
            parse_rfc3339("2025-01-01T00:00:00.1234567Z"),
            Some(1_735_689_600)
        );
        for bad in [
            "",
            "2025-1-01",
            "2025-02-30",
            "2023-02-29",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00",
            "2025-01-01T00:00:00+1:00",
            "2025-01-01Z",
            "２０２５-01-01",
            "2025-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
