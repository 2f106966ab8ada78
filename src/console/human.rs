//! How the console writes times, ages and durations for people: UTC with the age beside
//! it, durations in the largest units that matter. Pure.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since the epoch of an RFC 3339 time as the trail writes it.
pub fn unix_of(ts: &str) -> Option<i64> {
    OffsetDateTime::parse(ts, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// `2026-11-27 17:41:08 UTC` from the trail's `2026-11-27T17:41:08.123456Z`.
pub fn utc(ts: &str) -> String {
    match OffsetDateTime::parse(ts, &Rfc3339) {
        Ok(t) => utc_of(t.unix_timestamp()),
        Err(_) => ts.to_owned(),
    }
}

pub fn utc_of(unix: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// `just now`, `5 min ago`, `3 h ago`, `2 days ago`; `in 4 h` for the future.
pub fn relative(unix: i64, now: i64) -> String {
    let delta = now - unix;
    if delta.abs() < 10 {
        return "just now".to_owned();
    }
    let span = approximate(delta.unsigned_abs());
    if delta > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// One unit, rounded down: `45 s`, `12 min`, `3 h`, `2 days`.
fn approximate(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// A length of time in the two largest units that are not zero: `7 days`, `1 day 4 h`,
/// `2 h 30 min`, `45 s`.
pub fn duration_secs(secs: u64) -> String {
    let units = [
        (86_400, "day", "days"),
        (3600, "h", "h"),
        (60, "min", "min"),
        (1, "s", "s"),
    ];
    let mut parts = Vec::new();
    let mut left = secs;
    for (size, one, many) in units {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push(format!("{n} {}", if n == 1 { one } else { many }));
        }
        if parts.len() == 2 || (!parts.is_empty() && n == 0) {
            break;
        }
    }
    if parts.is_empty() {
        "0 s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trail_times_read_as_utc_with_their_age() {
        let ts = "2026-11-27T17:41:08.123456Z";
        assert_eq!(utc(ts), "2026-11-27 17:41:08 UTC");
        let t = unix_of(ts).unwrap();
        assert_eq!(relative(t, t + 3), "just now");
        assert_eq!(relative(t, t + 45), "45 s ago");
        assert_eq!(relative(t, t + 5 * 60 + 59), "5 min ago");
        assert_eq!(relative(t, t + 3 * 3600), "3 h ago");
        assert_eq!(relative(t, t + 3 * 86_400), "3 days ago");
        assert_eq!(relative(t + 4 * 3600, t), "in 4 h");
        assert_eq!(utc("not a time"), "not a time");
        assert_eq!(unix_of("yesterday"), None);
    }

    #[test]
    fn durations_use_the_two_largest_units_that_matter() {
        assert_eq!(duration_secs(0), "0 s");
        assert_eq!(duration_secs(45), "45 s");
        assert_eq!(duration_secs(7 * 86_400), "7 days");
        assert_eq!(duration_secs(86_400 + 4 * 3600 + 59), "1 day 4 h");
        assert_eq!(duration_secs(2 * 3600 + 30 * 60 + 10), "2 h 30 min");
        assert_eq!(duration_secs(3600 + 5), "1 h");
    }
}
