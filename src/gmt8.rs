//! TOP's wall-clock format: `yyyy-MM-dd HH:mm:ss` in GMT+8 (Asia/Shanghai has
//! no daylight saving time, so a fixed offset is exact).
//!
//! The gateway's `timestamp` parameter and the DTO's `pay_time` both use it,
//! whatever the host's own time zone is; only the official Java SDK forces the
//! zone, the others leak host local time (`docs/top-protocol.md` §1).
//!
//! A leaf: the domain ([`crate::event`]) reads `pay_time` with it and the
//! protocol ([`crate::top`]) writes it, so it belongs to neither.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

/// The `chrono` format string for `yyyy-MM-dd HH:mm:ss`.
pub const FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// GMT+8, the zone of every TOP wall-clock value.
pub fn offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// Formats an instant as GMT+8 `yyyy-MM-dd HH:mm:ss`.
pub fn format(instant: DateTime<Utc>) -> String {
    instant.with_timezone(&offset()).format(FORMAT).to_string()
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
