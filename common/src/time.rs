//! Dojo's `createdAt`: RFC 3339 with 0 to 9 fractional digits (Dojo sends 7, .NET ticks).
//!
//! PostgreSQL keeps microseconds only, so the exact instant is also exposed as
//! nanoseconds since the epoch: the state rule orders on that, not on a rounded value.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An instant as Dojo wrote it, kept to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DojoTime(DateTime<Utc>);

impl DojoTime {
    /// Parses an RFC 3339 date-time with any number (0-9) of fractional digits and any offset.
    pub fn parse(s: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| Self(t.with_timezone(&Utc)))
    }

    pub fn from_utc(t: DateTime<Utc>) -> Self {
        Self(t)
    }

    pub fn as_utc(&self) -> DateTime<Utc> {
        self.0
    }

    /// Nanoseconds since the Unix epoch (valid until the year 2262).
    pub fn epoch_nanos(&self) -> i64 {
        self.0
            .timestamp_nanos_opt()
            .unwrap_or(if self.0.timestamp() < 0 {
                i64::MIN
            } else {
                i64::MAX
            })
    }
}

impl fmt::Display for DojoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl Serialize for DojoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DojoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("createdAt `{s}` is not an RFC 3339 date-time"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_dojo_seven_digit_fraction_exactly() {
        let t = DojoTime::parse("2022-02-01T13:07:41.8667859Z").unwrap();
        assert_eq!(t.epoch_nanos() % 1_000_000_000, 866_785_900);
        assert_eq!(t.to_string(), "2022-02-01T13:07:41.866785900Z");
    }

    #[test]
    fn parses_zero_to_nine_digits_and_offsets() {
        for s in [
            "2022-02-01T13:07:41Z",
            "2022-02-01T13:07:41.8Z",
            "2022-02-01T13:07:41.866785912Z",
            "2022-02-01T14:07:41.86+01:00",
        ] {
            assert!(DojoTime::parse(s).is_some(), "{s}");
        }
        assert_eq!(
            DojoTime::parse("2022-02-01T14:07:41+01:00"),
            DojoTime::parse("2022-02-01T13:07:41Z")
        );
    }

    #[test]
    fn rejects_what_is_not_a_date_time() {
        for s in [
            "",
            "yesterday",
            "2022-02-01",
            "2022-13-01T00:00:00Z",
            "1643720861",
        ] {
            assert!(DojoTime::parse(s).is_none(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn any_fraction_length_round_trips_to_the_nanosecond(
            secs in 0i64..4_000_000_000, frac in 0u32..1_000_000_000, digits in 0usize..=9
        ) {
            let kept = if digits == 0 { 0 } else { frac / 10u32.pow(9 - digits as u32) };
            let text = chrono::DateTime::from_timestamp(secs, 0).unwrap().format("%Y-%m-%dT%H:%M:%S").to_string();
            let text = if digits == 0 { format!("{text}Z") } else { format!("{text}.{kept:0digits$}Z") };
            let t = DojoTime::parse(&text).unwrap();
            let nanos = kept as i64 * 10i64.pow(9 - digits as u32);
            prop_assert_eq!(t.epoch_nanos(), secs * 1_000_000_000 + nanos);
        }
    }
}
