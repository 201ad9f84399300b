use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A point in time: milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Parses ISO 8601 as every input path reads it — `2017-01-20`,
    /// `2017-01-20 12:00`, `2017-01-20T12:00:00.5Z`,
    /// `2017-01-20T12:00:00+02:00` — UTC unless a zone is given; `None`
    /// when `text` is not such a time (no surrounding whitespace allowed).
    #[inline]
    pub fn parse_iso(text: &[u8]) -> Option<Self> {
        parse_iso_ms(text).map(Self)
    }

    /// Milliseconds in a day.
    pub const DAY_MS: i64 = 86_400_000;

    /// The earliest instant every input path accepts: 0001-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(-62_135_596_800_000);

    /// The latest instant every input path accepts: 9999-12-31T23:59:59.999Z.
    /// Day arithmetic (partitions, grids, calendar features) cannot
    /// overflow inside `MIN..=MAX`, and Arrow's millisecond timestamps cast
    /// to every other unit there.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// `ms` as a timestamp when it lies in [`Timestamp::MIN`]`..=`[`Timestamp::MAX`]
    /// (years 1 to 9999, UTC), the one rule of every input path.
    pub fn checked(ms: i64) -> Option<Self> {
        (Self::MIN.0..=Self::MAX.0)
            .contains(&ms)
            .then_some(Self(ms))
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Days since the epoch (floor), as used for day partitions.
    pub fn day(self) -> i64 {
        self.0.div_euclid(Self::DAY_MS)
    }

    /// Seconds since midnight UTC.
    pub fn second_of_day(self) -> u32 {
        (self.0.rem_euclid(Self::DAY_MS) / 1000) as u32
    }

    /// Day of the week, 0 = Monday … 6 = Sunday.
    pub fn weekday(self) -> u32 {
        // 1970-01-01 was a Thursday (3 when Monday is 0).
        (self.day() + 3).rem_euclid(7) as u32
    }

    /// The calendar date `(year, month, day)` of this instant in UTC.
    pub fn date(self) -> (i32, u32, u32) {
        civil_from_days(self.day())
    }

    /// Midnight UTC of a calendar date, or `None` for an impossible date.
    pub fn from_date(year: i32, month: u32, day: u32) -> Option<Self> {
        days_from_civil(year, month, day).map(|d| Self(d * Self::DAY_MS))
    }
}

impl fmt::Display for Timestamp {
    /// ISO 8601 in UTC with a `Z`, milliseconds only when non-zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d) = self.date();
        let ms = self.0.rem_euclid(Self::DAY_MS);
        let (h, mi, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")?;
        if frac != 0 {
            write!(f, ".{frac:03}")?;
        }
        f.write_str("Z")
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm), or `None` when the month or day is out of range.
pub(crate) fn days_from_civil(year: i32, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// The spacing of a regular grid, in milliseconds (positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GridStep(i64);

impl GridStep {
    /// Five minutes.
    pub const FIVE_MINUTES: GridStep = GridStep(300_000);
    /// One hour.
    pub const HOUR: GridStep = GridStep(3_600_000);

    /// A step of `ms` milliseconds, which must be positive.
    pub fn from_millis(ms: i64) -> Result<Self> {
        if ms > 0 {
            Ok(Self(ms))
        } else {
            Err(Error::InvalidGridStep {
                text: format!("{ms}ms"),
            })
        }
    }

    /// The step in milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// The start of the bin `[t, t + step)` aligned to the epoch that holds `ts`.
    pub fn floor(self, ts: Timestamp) -> Timestamp {
        Timestamp(ts.0.div_euclid(self.0) * self.0)
    }

    /// How many steps make a day, when a day is a whole number of steps.
    pub fn per_day(self) -> Option<usize> {
        (Timestamp::DAY_MS % self.0 == 0).then(|| (Timestamp::DAY_MS / self.0) as usize)
    }
}

/// A time given by a user: ISO 8601 as [`Timestamp::parse_iso`] reads
/// it, surrounding whitespace ignored.
impl FromStr for Timestamp {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Self::parse_iso(text.trim().as_bytes()).ok_or_else(|| Error::InvalidTime {
            text: text.to_string(),
        })
    }
}

#[inline]
fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// `YYYY-MM-DD`, then optionally `[T ]HH:MM[:SS[.fff…]]`, then an optional
/// `Z`, `±HH:MM`, `±HHMM` or `±HH` zone.
#[inline]
fn parse_iso_ms(b: &[u8]) -> Option<i64> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])? as i32;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let days = Timestamp::from_date(year, month, day)?.millis();
    let mut rest = &b[10..];
    let mut ms: i64 = 0;
    if !rest.is_empty() && (rest[0] == b'T' || rest[0] == b' ' || rest[0] == b't') {
        rest = &rest[1..];
        if rest.len() < 5 || rest[2] != b':' {
            return None;
        }
        let h = digits(&rest[0..2])?;
        let mi = digits(&rest[3..5])?;
        rest = &rest[5..];
        let mut s = 0;
        if rest.first() == Some(&b':') {
            s = digits(rest.get(1..3)?)?;
            rest = &rest[3..];
            if rest.first() == Some(&b'.') || rest.first() == Some(&b',') {
                let end = rest[1..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .map_or(rest.len(), |p| p + 1);
                let frac = &rest[1..end];
                if frac.is_empty() {
                    return None;
                }
                let mut f = 0i64;
                for (i, &c) in frac.iter().take(3).enumerate() {
                    f += i64::from(c - b'0') * [100, 10, 1][i];
                }
                ms += f;
                rest = &rest[end..];
            }
        }
        // 24:00:00 is not accepted; 23:59:60 (leap second) is folded forward.
        if h > 23 || mi > 59 || s > 60 {
            return None;
        }
        ms += (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1000;
    }
    let offset_ms = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (zh, zm) = match zone {
                [a, b] => (digits(&[*a, *b])?, 0),
                [a, b, b':', c, d] | [a, b, c, d] => (digits(&[*a, *b])?, digits(&[*c, *d])?),
                _ => return None,
            };
            if zh > 23 || zm > 59 {
                return None;
            }
            let off = (i64::from(zh) * 60 + i64::from(zm)) * 60_000;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    Some(days + ms - offset_ms)
}

/// Parses a duration as the command line and config files write it: `0`,
/// or a positive span in the units of [`GridStep`] (`500ms`, `30s`, `15m`,
/// `1h`, `2d`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let step: GridStep = text.parse().map_err(|_| Error::InvalidDuration {
        text: text.to_string(),
    })?;
    Ok(std::time::Duration::from_millis(step.millis() as u64))
}

impl FromStr for GridStep {
    type Err = Error;
    /// Parses `300s`, `5m`, `5min`, `1h`, `1d`, `500ms`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::InvalidGridStep {
            text: text.to_string(),
        };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            "ms" => 1,
            "s" | "sec" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => Timestamp::DAY_MS,
            _ => return Err(bad()),
        };
        n.checked_mul(unit_ms)
            .filter(|&ms| ms > 0)
            .map(Self)
            .ok_or_else(bad)
    }
}

impl TryFrom<String> for GridStep {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<GridStep> for String {
    fn from(g: GridStep) -> String {
        g.to_string()
    }
}

impl fmt::Display for GridStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, size) in [
            ("d", Timestamp::DAY_MS),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_accepted_range_is_years_1_to_9999() {
        assert_eq!(Timestamp::MIN.to_string(), "0001-01-01T00:00:00Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::checked(Timestamp::MAX.0), Some(Timestamp::MAX));
        for bad in [
            Timestamp::MIN.0 - 1,
            Timestamp::MAX.0 + 1,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(Timestamp::checked(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_iso() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        let t = Timestamp::from_date(2014, 2, 14).unwrap();
        assert_eq!(
            Timestamp(t.0 + 52_200_000).to_string(),
            "2014-02-14T14:30:00Z"
        );
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::from_date(2024, 2, 30), None);
        assert!(Timestamp::from_date(2024, 2, 29).is_some());
        assert_eq!(Timestamp::from_date(2026, 11, 23).unwrap().weekday(), 0);
    }

    #[test]
    fn grid_steps_parse() {
        assert_eq!("5m".parse::<GridStep>().unwrap().millis(), 300_000);
        assert_eq!("5min".parse::<GridStep>().unwrap(), GridStep::FIVE_MINUTES);
        assert_eq!("1h".parse::<GridStep>().unwrap(), GridStep::HOUR);
        assert_eq!("30m".parse::<GridStep>().unwrap().to_string(), "30m");
        for bad in ["", "0m", "m", "5x", "-5m", "99999999999999999d"] {
            assert!(bad.parse::<GridStep>().is_err(), "{bad}");
        }
        assert_eq!(GridStep::HOUR.per_day(), Some(24));
        assert_eq!(
            GridStep::HOUR.floor(Timestamp(3_600_001)),
            Timestamp(3_600_000)
        );
        assert_eq!(GridStep::HOUR.floor(Timestamp(-1)), Timestamp(-3_600_000));
    }

    #[test]
    fn a_time_given_by_a_user_parses_as_ingestion_reads_it() {
        let day = Timestamp::from_date(2017, 1, 20).unwrap().millis();
        let at = |text: &str| text.parse::<Timestamp>().ok().map(|t| t.millis() - day);
        assert_eq!(at("2017-01-20"), Some(0));
        assert_eq!(at(" 2017-01-20 12:00 "), Some(12 * 3_600_000));
        assert_eq!(at("2017-01-20T12:00:00.5Z"), Some(12 * 3_600_000 + 500));
        assert_eq!(at("2017-01-20T12:00:00+02:00"), Some(10 * 3_600_000));
        for bad in [
            "yesterday",
            "1484913600",
            "2017-01-20 25:00",
            "2017-13-01",
            "",
        ] {
            let e = bad.parse::<Timestamp>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}` is not a time")), "{e}");
        }
        assert_eq!(Timestamp::parse_iso(b" 2017-01-20"), None, "no whitespace");
    }

    #[test]
    fn durations_parse_with_zero_allowed() {
        use std::time::Duration;
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration(" 15m ").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "0s", "-1m", "1y", "10"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("duration") && e.contains(bad), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn civil_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), Some(days));
        }
    }
}
