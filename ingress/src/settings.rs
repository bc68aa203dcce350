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

/// The WebSocket to Dojo (`DOJO_WS_URL` and `DOJO_API_KEY` both set).
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub url: String,
    pub api_key: Secret,
    /// `DOJO_SOFTWARE_HOUSE_ID`, `DOJO_RESELLER_ID`: handshake headers.
    pub software_house_id: Option<String>,
    pub reseller_id: Option<String>,
    /// `INGRESS_WS_PING_MS`: ping cadence; three silent intervals mean a dead peer.
    pub ping_interval: Duration,
    /// `INGRESS_WS_MAX_IN_FLIGHT`: requests handled at once on the socket.
    pub max_in_flight: usize,
    /// `INGRESS_WS_RECONNECT_MAX_MS`: cap of the reconnect backoff.
    pub reconnect_max: Duration,
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
    /// The WebSocket channel, if configured.
    pub ws: Option<WsSettings>,
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
        let publish_channels = parsed(src, "INGRESS_PUBLISH_CHANNELS", 1usize)?;
        if publish_channels == 0 {
            return Err(ConfigError(
                "INGRESS_PUBLISH_CHANNELS must be at least 1".into(),
            ));
        }
        let ws = match (optional(src, "DOJO_WS_URL"), optional(src, "DOJO_API_KEY")) {
            (Some(url), Some(key)) => {
                if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                    return Err(ConfigError(format!(
                        "DOJO_WS_URL={url:?} is not a ws:// or wss:// URL"
                    )));
                }
                Some(WsSettings {
                    url,
                    api_key: Secret::new(key),
                    software_house_id: optional(src, "DOJO_SOFTWARE_HOUSE_ID"),
                    reseller_id: optional(src, "DOJO_RESELLER_ID"),
                    ping_interval: Duration::from_millis(
                        parsed(src, "INGRESS_WS_PING_MS", 20_000u64)?.max(10),
                    ),
                    max_in_flight: parsed(src, "INGRESS_WS_MAX_IN_FLIGHT", 256usize)?.max(1),
                    reconnect_max: Duration::from_millis(parsed(
                        src,
                        "INGRESS_WS_RECONNECT_MAX_MS",
                        30_000,
                    )?),
                })
            }
            (Some(_), None) => {
                return Err(ConfigError(
                    "DOJO_WS_URL is set but DOJO_API_KEY is not".into(),
                ))
            }
            _ => None,
        };
        Ok(Self {
            ws,
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
    fn the_websocket_needs_a_url_and_a_key() {
        let s = Settings::from_source(&src(&[("DOJO_API_KEY", "sk_sandbox_x")])).unwrap();
        assert!(
            s.ws.is_none(),
            "a key alone (for `register`) opens no socket"
        );
        let s = Settings::from_source(&src(&[
            ("DOJO_WS_URL", "wss://eu.ws.dojo.tech/epos"),
            ("DOJO_API_KEY", "sk_sandbox_x"),
        ]))
        .unwrap();
        assert!(!format!("{:?}", s.ws.unwrap()).contains("sk_sandbox_x"));
        assert!(Settings::from_source(&src(&[("DOJO_WS_URL", "wss://x")])).is_err());
        assert!(Settings::from_source(&src(&[
            ("DOJO_WS_URL", "https://x"),
            ("DOJO_API_KEY", "k")
        ]))
        .is_err());
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
