//! Ingress configuration, from the environment variables named in CONTRACT.md (plus a few
//! tuning knobs of our own, all optional). Validated once at start.

use common::settings::{optional, or_default, parsed, ConfigError, Secret, Source};
use std::time::Duration;

/// The Basic credentials Dojo presents on `POST /v1/events`.
#[derive(Debug, Clone)]
pub struct RestCredentials {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `INGRESS_ADDR`; port 0 picks a free port (tests).
    pub addr: String,
    /// `AMQP_URL`; may hold a password: log it through `redact_url` only.
    pub amqp_url: String,
    /// `DOJO_REST_USERNAME` + `DOJO_REST_PASSWORD`; `None`: `POST /v1/events` answers 404.
    pub rest: Option<RestCredentials>,
    /// `DOJO_WEBHOOK_SECRETS` (comma-separated); empty: the webhook route answers 404.
    pub webhook_secrets: Vec<Secret>,
    /// `INGRESS_PUBLISH_TIMEOUT_MS`: longest wait for the broker's confirm before a 503.
    pub publish_timeout: Duration,
    /// `INGRESS_PUBLISH_CHANNELS`: confirm-mode channels shared by all requests.
    pub publish_channels: usize,
    /// `INGRESS_WORKERS`: HTTP worker threads (default: one per core).
    pub workers: Option<usize>,
    /// `INGRESS_RECONNECT_MAX_MS`: cap of the broker reconnect backoff.
    pub reconnect_max: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&common::settings::Env)
    }

    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let rest = match (
            optional(src, "DOJO_REST_USERNAME"),
            optional(src, "DOJO_REST_PASSWORD"),
        ) {
            (None, None) => None,
            (Some(username), Some(password)) if !username.contains(':') => Some(RestCredentials {
                username,
                password: Secret::new(password),
            }),
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "DOJO_REST_USERNAME must not contain ':' (RFC 7617)".into(),
                ))
            }
            _ => {
                return Err(ConfigError(
                    "DOJO_REST_USERNAME and DOJO_REST_PASSWORD must be set together".into(),
                ))
            }
        };
        let webhook_secrets = optional(src, "DOJO_WEBHOOK_SECRETS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Secret::new)
                    .collect()
            })
            .unwrap_or_default();
        let publish_channels = parsed(src, "INGRESS_PUBLISH_CHANNELS", 4usize)?;
        if publish_channels == 0 {
            return Err(ConfigError(
                "INGRESS_PUBLISH_CHANNELS must be at least 1".into(),
            ));
        }
        Ok(Self {
            addr: or_default(src, "INGRESS_ADDR", "0.0.0.0:8080"),
            amqp_url: or_default(src, "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            rest,
            webhook_secrets,
            publish_timeout: Duration::from_millis(parsed(
                src,
                "INGRESS_PUBLISH_TIMEOUT_MS",
                5_000,
            )?),
            publish_channels,
            workers: optional(src, "INGRESS_WORKERS")
                .map(|_| parsed(src, "INGRESS_WORKERS", 1usize))
                .transpose()?,
            reconnect_max: Duration::from_millis(parsed(src, "INGRESS_RECONNECT_MAX_MS", 5_000)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn src(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::from_source(&src(&[])).unwrap();
        assert_eq!(s.addr, "0.0.0.0:8080");
        assert_eq!(s.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(s.rest.is_none());
        assert!(s.webhook_secrets.is_empty());
    }

    #[test]
    fn secrets_split_on_commas_and_never_print() {
        let s = Settings::from_source(&src(&[("DOJO_WEBHOOK_SECRETS", "a, b,,c")])).unwrap();
        assert_eq!(s.webhook_secrets.len(), 3);
        assert!(!format!("{s:?}").contains("b,"));
        let s = Settings::from_source(&src(&[
            ("DOJO_REST_USERNAME", "dojo"),
            ("DOJO_REST_PASSWORD", "pa55"),
        ]))
        .unwrap();
        assert!(!format!("{s:?}").contains("pa55"));
    }

    #[test]
    fn half_configured_credentials_are_refused() {
        let err = Settings::from_source(&src(&[("DOJO_REST_USERNAME", "dojo")])).unwrap_err();
        assert!(err.to_string().contains("set together"));
        let err = Settings::from_source(&src(&[
            ("DOJO_REST_USERNAME", "a:b"),
            ("DOJO_REST_PASSWORD", "x"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("':'"));
    }
}
