//! The basic ISO 8601 timestamps SigV4 signs (`20150830T123600Z`), without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYYMMDD'T'HHMMSS'Z'` (UTC) to a point in time.
pub(super) fn parse_basic_iso8601(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = s.get(range)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_basic_iso8601(s).expect("valid date")
    }

    #[test]
    fn basic_iso8601_dates_parse_to_unix_time() {
        assert_eq!(at("19700101T000000Z"), UNIX_EPOCH);
        assert_eq!(
            at("20150830T123600Z")
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_440_938_160
        );
        assert!(parse_basic_iso8601("2015-08-30T12:36:00Z").is_none());
        assert!(parse_basic_iso8601("20151330T123600Z").is_none());
    }
}
