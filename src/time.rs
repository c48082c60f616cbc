//! Timestamps: integer Unix seconds in the store, RFC 3339 (UTC) in JSON and logs, local
//! time in the tables people read.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 in UTC, e.g. `2025-01-01T00:00:00Z`.
pub fn rfc3339(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Reads `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DDTHH:MM:SS` followed by `Z` or an offset
/// `+HH:MM` / `-HH:MM` (RFC 3339; a space for the `T` and fractions of a second are accepted),
/// as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |a: usize, b: usize| -> Option<i64> {
        let t = s.get(a..b)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" || !(1..=12).contains(&m) {
        return None;
    }
    let month_days = [
        31,
        28 + i64::from(is_leap(y)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d < 1 || d > *month_days.get(usize::try_from(m - 1).ok()?)? {
        return None;
    }
    let day = days_from_civil(y, m, d) * 86_400;
    if s.len() == 10 {
        return Some(day);
    }
    if !matches!(s.get(10..11)?, "T" | "t" | " ") || s.get(13..14)? != ":" || s.get(16..17)? != ":"
    {
        return None;
    }
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        rest = frac.get(digits..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if rest.len() != 6 || rest.get(3..4)? != ":" || oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(day + hh * 3600 + mm * 60 + ss - offset)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// A proleptic Gregorian (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
