//! Configuration pieces shared by both services: reading environment variables with
//! one-line errors, and a wrapper that keeps secrets out of logs and `Debug` output.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A value that must never be printed (passwords, signing secrets, tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configuration problem, phrased for the one line a service prints before exiting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Where settings come from: the process environment in production, a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// Reads the real process environment.
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Source for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// A variable's value if set and not blank.
pub fn optional(src: &dyn Source, name: &str) -> Option<String> {
    src.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

pub fn or_default(src: &dyn Source, name: &str, default: &str) -> String {
    optional(src, name).unwrap_or_else(|| default.to_owned())
}

/// Parses a variable, or takes the default when it is unset.
pub fn parsed<T: FromStr>(src: &dyn Source, name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match optional(src, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| ConfigError(format!("{name}={v:?} is invalid: {e}"))),
    }
}

/// Parses a variable that must be at least `min` (a count, a timeout), or takes the
/// default when it is unset: `NAME must be at least MIN` otherwise, never a panic later.
pub fn at_least<T>(src: &dyn Source, name: &str, default: T, min: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display,
    T::Err: fmt::Display,
{
    let value = parsed(src, name, default)?;
    if value < min {
        return Err(ConfigError(format!("{name} must be at least {min}")));
    }
    Ok(value)
}

/// Parses a variable that must lie in `min..=max` (a count that sizes a buffer or a
/// pool), or takes the default when it is unset: `NAME must be from MIN to MAX` otherwise.
pub fn in_range<T>(
    src: &dyn Source,
    name: &str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display,
    T::Err: fmt::Display,
{
    let value = parsed(src, name, default)?;
    if value < min || value > max {
        return Err(ConfigError(format!("{name} must be from {min} to {max}")));
    }
    Ok(value)
}

/// The longest duration a `*_MS` or `*_SECS` variable may give: 365 days. Longer would
/// mean "never" and overflow timers and date arithmetic; no setting needs it.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration in milliseconds (`NAME_MS`), or the default (ms) when unset; at most
/// [`MAX_SETTING_DURATION`], else `NAME must be at most 31536000000` (ms).
pub fn millis(src: &dyn Source, name: &str, default: u64) -> Result<Duration, ConfigError> {
    let max = MAX_SETTING_DURATION.as_millis() as u64;
    Ok(Duration::from_millis(in_range(src, name, default, 0, max)?))
}

/// A duration in seconds (`NAME_SECS`), or the default (s) when unset; at most
/// [`MAX_SETTING_DURATION`].
pub fn secs(src: &dyn Source, name: &str, default: u64) -> Result<Duration, ConfigError> {
    let max = MAX_SETTING_DURATION.as_secs();
    Ok(Duration::from_secs(in_range(src, name, default, 0, max)?))
}

/// Strips the password from a URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn durations_and_counts_are_bounded_with_their_name() {
        let src: std::collections::HashMap<String, String> = [
            ("A_MS".to_owned(), "18446744073709551615".to_owned()),
            ("B_SECS".to_owned(), "31536001".to_owned()),
            ("C_MS".to_owned(), "250".to_owned()),
            ("D".to_owned(), "0".to_owned()),
        ]
        .into();
        assert_eq!(
            millis(&src, "A_MS", 1).unwrap_err().0,
            "A_MS must be from 0 to 31536000000"
        );
        assert!(secs(&src, "B_SECS", 1)
            .unwrap_err()
            .0
            .starts_with("B_SECS must be"));
        assert_eq!(millis(&src, "C_MS", 1).unwrap(), Duration::from_millis(250));
        assert_eq!(
            millis(&src, "UNSET_MS", 7).unwrap(),
            Duration::from_millis(7)
        );
        assert_eq!(
            at_least(&src, "D", 5u32, 1).unwrap_err().0,
            "D must be at least 1"
        );
        assert_eq!(
            in_range(&src, "D", 5u32, 1, 9).unwrap_err().0,
            "D must be from 1 to 9"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn blank_is_unset_and_bad_numbers_are_named() {
        let src: HashMap<String, String> =
            [("A".into(), "  ".into()), ("N".into(), "ten".into())].into();
        assert_eq!(optional(&src, "A"), None);
        assert_eq!(or_default(&src, "A", "x"), "x");
        let err = parsed::<u64>(&src, "N", 1).unwrap_err().to_string();
        assert!(err.contains("N=\"ten\""), "{err}");
        assert_eq!(parsed::<u64>(&src, "MISSING", 7).unwrap(), 7);
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
