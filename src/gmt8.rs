//! TOP's wall-clock format: `yyyy-MM-dd HH:mm:ss` in GMT+8 (Asia/Shanghai has
//! no daylight saving time, so a fixed offset is exact).
//!
//! The gateway's `timestamp` parameter and the DTO's `pay_time` both use it,
//! whatever the host's own time zone is; only the official Java SDK forces the
//! zone, the others leak host local time (`docs/top-protocol.md` §1).
//!
//! A leaf: the domain ([`crate::event`]) reads `pay_time` with it and the
//! protocol ([`crate::top`]) writes it, so it belongs to neither.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeZone, Timelike, Utc};

/// The `chrono` format string for `yyyy-MM-dd HH:mm:ss`.
pub const FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// GMT+8, the zone of every TOP wall-clock value.
pub fn offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// Formats an instant as GMT+8 `yyyy-MM-dd HH:mm:ss`.
pub fn format(instant: DateTime<Utc>) -> String {
    let local = instant.with_timezone(&offset()).naive_local();
    let year = local.year();
    if !(0..=9999).contains(&year) {
        // Outside four digits chrono writes a sign; no such time is ever sent.
        return local.format(FORMAT).to_string();
    }
    // Written field by field: this runs for every call, and chrono's
    // format-string interpreter costs several times more.
    let mut out = String::with_capacity(19);
    let mut push = |value: u32, digits: u32, separator: Option<char>| {
        for place in (0..digits).rev() {
            let digit = value / 10u32.pow(place) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
        if let Some(separator) = separator {
            out.push(separator);
        }
    };
    push(year as u32, 4, Some('-'));
    push(local.month(), 2, Some('-'));
    push(local.day(), 2, Some(' '));
    push(local.hour(), 2, Some(':'));
    push(local.minute(), 2, Some(':'));
    push(local.second(), 2, None);
    out
}

/// Parses GMT+8 `yyyy-MM-dd HH:mm:ss` (exactly that shape, no fractions).
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    // chrono accepts some shorter forms (single-digit fields); the format is fixed-width.
    if text.len() != 19 {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(text, FORMAT).ok()?;
    offset()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// Converts epoch milliseconds, refusing values chrono cannot represent.
pub fn from_epoch_millis(millis: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_gmt8_whatever_the_input_zone() {
        let utc = Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 0).unwrap();
        assert_eq!(format(utc), "2020-10-10 20:00:00");
    }

    #[test]
    fn formats_like_chrono_across_the_whole_range() {
        for seconds in [
            0i64,
            59,
            86_399,
            951_782_400, // 2000-02-29, a leap day
            1_700_000_000,
            253_402_300_799 - 8 * 3600, // the last second of year 9999 in GMT+8
            -62_167_219_200,            // year 0
        ] {
            let instant = DateTime::<Utc>::from_timestamp(seconds, 0).unwrap();
            let expected = instant.with_timezone(&offset()).format(FORMAT).to_string();
            assert_eq!(format(instant), expected, "{seconds}");
        }
        let far = DateTime::<Utc>::from_timestamp(300_000_000_000, 0).unwrap();
        assert_eq!(
            format(far),
            far.with_timezone(&offset()).format(FORMAT).to_string()
        );
    }

    #[test]
    fn parse_is_the_inverse_of_format() {
        let utc = Utc.with_ymd_and_hms(2020, 12, 31, 23, 30, 1).unwrap();
        assert_eq!(parse(&format(utc)), Some(utc));
    }

    #[test]
    fn parse_rejects_other_shapes() {
        for bad in [
            "2020-10-10T20:00:00",
            "2020-10-10 20:00",
            "2020-1-10 20:00:00",
            "2020-02-30 20:00:00",
            "2020-10-10 20:00:00.5",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
