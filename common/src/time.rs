//! Dojo's `createdAt`: RFC 3339 with 0 to 9 fractional digits (Dojo sends 7, .NET ticks).
//!
//! PostgreSQL keeps microseconds only, so the exact instant is also exposed as
//! nanoseconds since the epoch: the state rule orders on that, not on a rounded value.
//! Only instants from [`DojoTime::EARLIEST`] (the Unix epoch) up to, not including,
//! [`DojoTime::END`] (2262-01-01) are accepted: every one of them is a distinct `i64` of
//! nanoseconds, so no two instants can ever tie by saturation, and anything outside is
//! an absurd date for a payment (refused with a 400, never silently reordered).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An instant as Dojo wrote it, kept to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DojoTime(DateTime<Utc>);

/// Why a `createdAt` text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("createdAt `{0}` is not an RFC 3339 date-time")]
    NotADateTime(String),
    #[error("createdAt `{0}` is outside the accepted range 1970-01-01T00:00:00Z .. 2262-01-01T00:00:00Z")]
    OutOfRange(String),
}

impl DojoTime {
    /// The earliest accepted instant: the Unix epoch.
    pub const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;
    /// The first instant no longer accepted, 2262-01-01T00:00:00Z (the last whole year
    /// whose nanoseconds since the epoch fit an `i64`).
    pub const END: DateTime<Utc> = match DateTime::from_timestamp(9_214_646_400, 0) {
        Some(t) => t,
        None => panic!("2262-01-01 is a valid instant"),
    };

    /// Parses an RFC 3339 date-time with any number (0-9) of fractional digits and any
    /// offset; `None` if it is not one or is outside the accepted range.
    pub fn parse(s: &str) -> Option<Self> {
        Self::parse_checked(s).ok()
    }

    /// As [`DojoTime::parse`], telling a malformed text from an out-of-range instant.
    pub fn parse_checked(s: &str) -> Result<Self, TimeError> {
        let t = DateTime::parse_from_rfc3339(s.trim())
            .map_err(|_| TimeError::NotADateTime(s.to_owned()))?;
        Self::from_utc(t.with_timezone(&Utc)).ok_or_else(|| TimeError::OutOfRange(s.to_owned()))
    }

    /// `None` outside the accepted range.
    pub fn from_utc(t: DateTime<Utc>) -> Option<Self> {
        (Self::EARLIEST..Self::END).contains(&t).then_some(Self(t))
    }

    pub fn as_utc(&self) -> DateTime<Utc> {
        self.0
    }

    /// The instant truncated (towards the past) to microseconds, PostgreSQL's precision.
    /// Bind this rather than [`DojoTime::as_utc`]: sqlx truncates towards 2000-01-01, so
    /// an earlier instant would otherwise be stored rounded up.
    pub fn as_utc_micros(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.epoch_nanos().div_euclid(1000))
            .expect("an accepted instant")
    }

    /// Nanoseconds since the Unix epoch: exact for every accepted instant, so ordering
    /// on it is ordering on the full instant.
    pub fn epoch_nanos(&self) -> i64 {
        self.0
            .timestamp_nanos_opt()
            .expect("an accepted instant fits i64 nanoseconds")
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
        Self::parse_checked(&s).map_err(serde::de::Error::custom)
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

    #[test]
    fn instants_outside_the_range_are_refused_not_saturated() {
        for s in [
            "2262-01-01T00:00:00Z",
            "2263-01-01T00:00:00Z",
            "2300-01-01T00:00:00Z",
            "9999-12-31T23:59:59.9999999Z",
            "1969-12-31T23:59:59.9999999Z",
            "1500-01-01T00:00:00Z",
            "1400-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "1970-01-01T00:59:59+01:00",
        ] {
            assert_eq!(
                DojoTime::parse_checked(s),
                Err(TimeError::OutOfRange(s.into())),
                "{s}"
            );
        }
        let first = DojoTime::parse("1970-01-01T00:00:00Z").unwrap();
        let last = DojoTime::parse("2261-12-31T23:59:59.999999999Z").unwrap();
        assert_eq!(first.epoch_nanos(), 0);
        assert!(last.epoch_nanos() > first.epoch_nanos());
        assert_eq!(last.to_string(), "2261-12-31T23:59:59.999999999Z");
    }

    proptest! {
        /// Across the whole accepted range, the order of the nanosecond numbers is the
        /// order of the instants, with no ties between distinct instants.
        #[test]
        fn nanoseconds_order_like_the_instants(
            a in 0i64..9_214_646_400, an in 0u32..1_000_000_000,
            b in 0i64..9_214_646_400, bn in 0u32..1_000_000_000,
        ) {
            let at = |s, n| DojoTime::from_utc(chrono::DateTime::from_timestamp(s, n).unwrap()).unwrap();
            let (x, y) = (at(a, an), at(b, bn));
            prop_assert_eq!(x.epoch_nanos().cmp(&y.epoch_nanos()), (a, an).cmp(&(b, bn)));
        }

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
