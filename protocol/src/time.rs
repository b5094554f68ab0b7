//! Durations as users write them (`90s`, `30m`, `2h`, `1d`) and RFC 3339 UTC times.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not a duration: {0:?} (write a whole number and a unit: 90s, 30m, 2h, 1d)")]
pub struct DurationError(pub String);

/// Parses `90s`, `30m`, `2h`, `1d` (and `500ms`) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let error = || DurationError(text.to_owned());
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(error)?;
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| error())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        "d" => 24 * 3600 * 1000,
        _ => return Err(error()),
    };
    number.checked_mul(unit_ms).ok_or_else(error)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with millisecond precision
/// (`2026-11-21T06:11:04.120Z`).
pub fn format_rfc3339_ms(unix_ms: u64) -> String {
    let mut text = String::with_capacity(RFC3339_MS_BYTES);
    write_rfc3339_ms(&mut text, unix_ms);
    text
}

/// Length of [`format_rfc3339_ms`]'s text up to the year 9999.
const RFC3339_MS_BYTES: usize = 24;

/// [`format_rfc3339_ms`] into `text`, replacing what it held and reusing its memory.
///
/// Every task object carries two or more of these, so the digits are written into a fixed
/// buffer rather than through `format!`, a tenth of a listing's cost (docs/BENCHMARKS.md,
/// "CLI calls"). Years past 9999 take the general path.
pub fn write_rfc3339_ms(text: &mut String, unix_ms: u64) {
    let seconds_total = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = (seconds_total / 86_400) as i64;
    let second_of_day = seconds_total % 86_400;
    let (year, month, day) = civil_from_days(days);
    text.clear();
    let Ok(year @ 0..=9999) = u64::try_from(year) else {
        text.push_str(&format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        ));
        return;
    };
    let mut digits = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for place in (at..at + width).rev() {
            digits[place] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, second_of_day / 3600);
    put(14, 2, second_of_day / 60 % 60);
    put(17, 2, second_of_day % 60);
    put(20, 3, millis);
    // Digits and ASCII punctuation: always UTF-8.
    text.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// Parses an RFC 3339 time or a plain date (`2026-11-21`, midnight UTC) into milliseconds
/// since the epoch. Offsets other than `Z` are applied.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if bytes.len() == 10 {
        return u64::try_from(days * 86_400_000).ok();
    }
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.find(|c: char| !c.is_ascii_digit()).unwrap_or(fraction.len());
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 60 + minutes)
        }
        _ => return None,
    };
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        for bad in ["", "m", "10", "1.5h", "-1s", "10y", "99999999999999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(1_795_241_464_120), "2026-11-21T06:11:04.120Z");
        let mut reused = "an earlier and longer text".to_owned();
        write_rfc3339_ms(&mut reused, 1_795_241_464_120);
        assert_eq!(reused, "2026-11-21T06:11:04.120Z");
        assert_eq!(parse_rfc3339_ms("2026-11-21"), Some(1_795_219_200_000));
        assert_eq!(parse_rfc3339_ms("2026-11-21T07:11:04+01:00"), Some(1_795_241_464_000));
        assert_eq!(parse_rfc3339_ms("2026-13-01"), None);
    }

    proptest! {
        #[test]
        fn rfc3339_digits_match_the_general_formatter(
            unix_ms in prop_oneof![0u64..253_402_300_800_000, 253_402_300_800_000u64..u64::MAX / 2]
        ) {
            // Goal: the fixed-buffer digits are the `format!` text, past year 9999 too.
            let seconds = unix_ms / 1000;
            let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
            let general = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                seconds % 86_400 / 3600,
                seconds % 86_400 / 60 % 60,
                seconds % 60,
                unix_ms % 1000
            );
            prop_assert_eq!(format_rfc3339_ms(unix_ms), general);
        }

        #[test]
        fn rfc3339_round_trips(unix_ms in 0u64..253_402_300_799_000) {
            prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(unix_ms)), Some(unix_ms));
        }
    }
}
