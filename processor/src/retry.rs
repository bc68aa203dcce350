//! Delayed redelivery of transient failures through RabbitMQ.
//!
//! Each delay of the schedule is a quorum queue with that message TTL whose expired
//! messages dead-letter (at-least-once) back to `dojo.events.processor`. A message that
//! failed for a passing reason (database down, timeout) is republished to the queue of
//! its attempt with `x-attempt` counted up, then acked; it comes back after the delay.
//! The default schedule (1s, 5s, 30s, 2m, then every 10m, 30 attempts) spans more than
//! four hours, far beyond a database restart, so an outage never dead-letters anything.

use common::settings::ConfigError;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use std::time::Duration;

pub const ATTEMPT_HEADER: &str = "x-attempt";
pub const FIRST_FAILURE_HEADER: &str = "x-first-failure-at";
pub const LAST_ERROR_HEADER: &str = "x-last-error";

/// The retry schedule: the delay before each attempt; the last delay repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub delays: Vec<Duration>,
    /// Attempts after which a message is dead-lettered ("retries exhausted").
    pub max_attempts: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::parse("1s,5s,30s,2m,10m", 30).expect("valid default")
    }
}

/// The longest duration [`parse_delay`] accepts: 3,650 days (about ten years), far
/// beyond any retention or window, and short enough for any date arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(3_650 * 86_400);

/// The longest retry delay: RabbitMQ's `x-message-ttl` is at most 2^32 - 1 ms
/// (about 49.7 days); a longer delay queue could not be declared.
pub const MAX_RETRY_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// `1500ms`, `5s`, `2m`, `3h`, `7d`: a positive duration up to [`MAX_DURATION`];
/// `None` for anything else.
pub fn parse_delay(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let ms = n.checked_mul(per_unit)?;
    let delay = Duration::from_millis(ms);
    (ms > 0 && delay <= MAX_DURATION).then_some(delay)
}

/// `1500ms`, `5s`, `2m`: how a delay is written in settings and queue names.
pub fn format_delay(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

impl Schedule {
    /// `delays` like `1s,5s,30s,2m,10m`.
    pub fn parse(delays: &str, max_attempts: u32) -> Result<Self, ConfigError> {
        let delays: Option<Vec<Duration>> = delays.split(',').map(parse_delay).collect();
        if let Some(long) = delays.iter().flatten().find(|d| **d > MAX_RETRY_DELAY) {
            return Err(ConfigError(format!(
                "PROCESSOR_RETRY_DELAYS: {} is longer than RabbitMQ's longest message TTL (2^32 - 1 ms, about 49 days)",
                format_delay(*long)
            )));
        }
        match delays {
            Some(d) if !d.is_empty() && max_attempts > 0 => Ok(Self { delays: d, max_attempts }),
            _ => Err(ConfigError(
                "PROCESSOR_RETRY_DELAYS must be a list like 1s,5s,30s,2m,10m (each at most 49 days) and PROCESSOR_RETRY_ATTEMPTS at least 1".into(),
            )),
        }
    }

    /// The queue holding messages for `delay`.
    pub fn queue_name(delay: Duration) -> String {
        format!(
            "{}.retry.{}",
            common::topology::PROCESSOR_QUEUE,
            format_delay(delay)
        )
    }

    /// Where attempt `attempt` (1-based) waits, or `None` once retries are exhausted.
    pub fn queue_for(&self, attempt: u32) -> Option<String> {
        if attempt > self.max_attempts {
            return None;
        }
        let i = (attempt as usize - 1).min(self.delays.len() - 1);
        Some(Self::queue_name(self.delays[i]))
    }

    /// Declares one delay queue per distinct delay.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        for delay in &self.delays {
            // The delay: a message expires after waiting this long, and is then
            // dead-lettered back to the work queue, with confirms.
            let mut args = common::topology::dead_lettering_to(common::topology::PROCESSOR_QUEUE);
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            channel
                .queue_declare(
                    Self::queue_name(*delay).as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await?;
        }
        Ok(())
    }
}

/// The `x-attempt` header of a message (0 if it never failed).
pub fn attempts(headers: Option<&FieldTable>) -> u32 {
    match headers.and_then(|h| h.inner().get(ATTEMPT_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_outlasts_a_database_restart() {
        let s = Schedule::default();
        let total: Duration = (1..=s.max_attempts)
            .map(|a| s.delays[(a as usize - 1).min(s.delays.len() - 1)])
            .sum();
        assert!(total > Duration::from_secs(4 * 3600), "{total:?}");
        assert_eq!(s.queue_for(1).unwrap(), "dojo.events.processor.retry.1s");
        assert_eq!(s.queue_for(4).unwrap(), "dojo.events.processor.retry.2m");
        assert_eq!(s.queue_for(30).unwrap(), "dojo.events.processor.retry.10m");
        assert_eq!(s.queue_for(31), None);
    }

    #[test]
    fn delays_parse_and_print() {
        let s = Schedule::parse("250ms, 2s,1m", 3).unwrap();
        assert_eq!(
            s.delays,
            [
                Duration::from_millis(250),
                Duration::from_secs(2),
                Duration::from_secs(60)
            ]
        );
        assert_eq!(format_delay(Duration::from_millis(250)), "250ms");
        assert_eq!(format_delay(Duration::from_secs(120)), "2m");
        assert!(Schedule::parse("5 parsecs", 3).is_err());
        assert!(Schedule::parse("0s", 3).is_err());
        assert!(Schedule::parse("1s", 0).is_err());
        // RabbitMQ's TTL is at most 2^32 - 1 ms: a longer delay is refused at start,
        // not met as a queue that cannot be declared.
        assert!(Schedule::parse("1s,49d", 3).is_ok());
        let long = Schedule::parse("1s,50d", 3).unwrap_err();
        assert!(long.0.contains("1200h is longer"), "{}", long.0);
        assert!(Schedule::parse("1000000000d", 3).is_err());
    }

    #[test]
    fn durations_are_bounded_and_never_overflow() {
        assert_eq!(parse_delay("3650d"), Some(MAX_DURATION));
        assert_eq!(parse_delay("3651d"), None);
        assert_eq!(parse_delay("99999999d"), None);
        assert_eq!(parse_delay("18446744073709551615d"), None);
        assert_eq!(parse_delay("99999999999999999999ms"), None);
    }

    #[test]
    fn attempts_read_any_integer_header() {
        let mut h = FieldTable::default();
        assert_eq!(attempts(Some(&h)), 0);
        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(attempts(Some(&h)), 3);
    }
}
