//! Field parsers for timestamps and values, written for speed on the hot
//! path of ingestion.

use serde::{Deserialize, Serialize};
use shardcast_core::Timestamp;

/// How timestamps are written in an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimestampFormat {
    /// Numbers are unix seconds (or millis when above 1e11); text is ISO 8601.
    #[default]
    Auto,
    /// ISO 8601 or `YYYY-MM-DD HH:MM:SS`; UTC when no zone is given.
    Iso,
    /// Unix seconds, possibly fractional.
    UnixSeconds,
    /// Unix milliseconds.
    UnixMillis,
}

impl std::str::FromStr for TimestampFormat {
    type Err = crate::Error;

    /// `auto`, `iso`, `unix-s` (or `unix-seconds`), `unix-ms` (or
    /// `unix-millis`).
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "iso" => Ok(Self::Iso),
            "unix-s" | "unix-seconds" => Ok(Self::UnixSeconds),
            "unix-ms" | "unix-millis" => Ok(Self::UnixMillis),
            other => Err(crate::Error::Spec {
                reason: format!("unknown timestamp format `{other}`: auto, iso, unix-s or unix-ms"),
            }),
        }
    }
}

/// Parses a timestamp to milliseconds since the epoch, UTC.
pub(crate) fn parse_timestamp(field: &[u8], format: TimestampFormat) -> Option<i64> {
    let field = trim(field);
    match format {
        TimestampFormat::Iso => Timestamp::parse_iso(field).map(Timestamp::millis),
        TimestampFormat::UnixSeconds => parse_unix(field, false),
        TimestampFormat::UnixMillis => parse_unix(field, true),
        TimestampFormat::Auto => {
            if field.len() > 4 && field[4] == b'-' {
                Timestamp::parse_iso(field).map(Timestamp::millis)
            } else {
                let v: f64 = std::str::from_utf8(field).ok()?.parse().ok()?;
                parse_unix(field, v.abs() >= 1e11)
            }
        }
    }
}

fn parse_unix(field: &[u8], millis: bool) -> Option<i64> {
    let text = std::str::from_utf8(field).ok()?;
    // Beyond i64 the result saturates: the caller's range check (years 1
    // to 9999) then names it out of range rather than malformed.
    if let Ok(i) = text.parse::<i64>() {
        return Some(if millis { i } else { i.saturating_mul(1000) });
    }
    let v: f64 = text.parse().ok()?;
    let ms = if millis { v } else { v * 1000.0 };
    ms.is_finite().then(|| ms.round() as i64)
}

/// Parses a finite number. `Err(true)` when it parses but is not finite.
pub(crate) fn parse_value(field: &[u8]) -> Result<f64, bool> {
    let text = std::str::from_utf8(trim(field)).map_err(|_| false)?;
    if text.is_empty() {
        return Err(false);
    }
    let v: f64 = text.parse().map_err(|_| false)?;
    if v.is_finite() { Ok(v) } else { Err(true) }
}

pub(crate) fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_392_388_200_000; // 2014-02-14 14:30:00 UTC

    #[test]
    fn iso_variants() {
        let f = TimestampFormat::Auto;
        for text in [
            "2014-02-14 14:30:00",
            "2014-02-14T14:30:00",
            "2014-02-14T14:30:00Z",
            "2014-02-14T14:30:00.000Z",
            "2014-02-14T15:30:00+01:00",
            "2014-02-14T13:30:00-0100",
            "2014-02-14T16:30:00+02",
            "2014-02-14 14:30",
            " 2014-02-14 14:30:00 ",
        ] {
            assert_eq!(parse_timestamp(text.as_bytes(), f), Some(T0), "{text}");
        }
        assert_eq!(
            parse_timestamp(b"2014-02-14T14:30:00.25Z", f),
            Some(T0 + 250)
        );
        assert_eq!(parse_timestamp(b"2014-02-14", f), Some(T0 - 52_200_000));
    }

    #[test]
    fn unix_variants() {
        let f = TimestampFormat::Auto;
        assert_eq!(parse_timestamp(b"1392388200", f), Some(T0));
        assert_eq!(parse_timestamp(b"1392388200000", f), Some(T0));
        assert_eq!(parse_timestamp(b"1392388200.5", f), Some(T0 + 500));
        assert_eq!(
            parse_timestamp(b"1392388200", TimestampFormat::UnixMillis),
            Some(1_392_388_200)
        );
        assert_eq!(
            parse_timestamp(b"1392388200", TimestampFormat::UnixSeconds),
            Some(T0)
        );
        assert_eq!(parse_timestamp(b"1392388200", TimestampFormat::Iso), None);
    }

    #[test]
    fn bad_timestamps() {
        for text in [
            "",
            "yesterday",
            "2014-02-30 00:00:00",
            "2014-13-01",
            "2014-02-14 25:00:00",
            "2014-02-14 14:30:00 UTC",
            "2014-02-14T14",
            "2014-02-14T14:30:00+25:00",
            "nan",
            "2014-02-14T14:30:00.",
            "inf",
        ] {
            assert_eq!(
                parse_timestamp(text.as_bytes(), TimestampFormat::Auto),
                None,
                "{text}"
            );
        }
    }

    #[test]
    fn values() {
        assert_eq!(parse_value(b"1.5"), Ok(1.5));
        assert_eq!(parse_value(b" -2e3 "), Ok(-2000.0));
        assert_eq!(parse_value(b"NaN"), Err(true));
        assert_eq!(parse_value(b"inf"), Err(true));
        assert_eq!(parse_value(b"abc"), Err(false));
        assert_eq!(parse_value(b""), Err(false));
        assert_eq!(parse_value(b"\xff"), Err(false));
    }
}
