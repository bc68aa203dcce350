//! Ingress configuration, from the environment variables named in CONTRACT.md (plus a few
//! tuning knobs of our own, all optional). Validated once at start.

use common::locations::Locations;
use common::settings::{in_range, optional, or_default, parsed, ConfigError, Source};
use std::time::Duration;

pub use common::locations::RestCredentials;

/// Dojo's EPOS WebSocket endpoint (dojo-api.md §2c), used by locations of a locations
/// file when `DOJO_WS_URL` is unset.
pub const DOJO_WS_URL: &str = "wss://eu.ws.dojo.tech/epos";

/// The WebSockets to Dojo: what every location's socket shares (its key is its own).
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// `DOJO_WS_URL`.
    pub url: String,
    /// `DOJO_SOFTWARE_HOUSE_ID`, `DOJO_RESELLER_ID`: handshake headers.
    pub software_house_id: Option<String>,
    pub reseller_id: Option<String>,
    /// `INGRESS_WS_PING_MS`: ping cadence; three silent intervals mean a dead peer.
    pub ping_interval: Duration,
    /// `INGRESS_WS_MAX_IN_FLIGHT`: requests handled at once on one socket.
    pub max_in_flight: usize,
    /// `INGRESS_WS_RECONNECT_MAX_MS`: cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// `INGRESS_WS_STABLE_MS`: a socket must stay open this long before its backoff
    /// starts again from the beginning (a peer that accepts and closes at once is
    /// backed off from, not hammered).
    pub stable_after: Duration,
    /// `INGRESS_WS_HANDSHAKES_PER_SEC`: most handshakes opened per second by this
    /// ingress, all locations together (evenly spaced, jittered).
    pub handshakes_per_sec: u32,
    /// `INGRESS_WS_LEASE_RETRY_MS`: how often a replica that does not hold the sockets'
    /// lease tries to take it.
    pub lease_retry: Duration,
    /// `INGRESS_WS_LEASE_GRACE_MS`: how long a holder that lost the broker keeps its
    /// sockets while it tries to renew the lease.
    pub lease_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `INGRESS_ADDR`; port 0 picks a free port (tests).
    pub addr: String,
    /// `AMQP_URL`: one URL, or one per cluster node, comma-separated
    /// (`common::amqp::Brokers`); may hold a password: log it through `redact_url` only.
    pub amqp_url: String,
    /// The locations served: `DOJO_LOCATIONS_FILE`, or the single-location variables.
    pub locations: Locations,
    /// `DOJO_LOCATIONS_FILE`, re-read on SIGHUP and when it changes.
    pub locations_file: Option<String>,
    /// `INGRESS_LOCATIONS_POLL_MS`: how often the locations file is checked for changes.
    pub locations_poll: Duration,
    /// `INGRESS_PUBLISH_TIMEOUT_MS`: longest wait for the broker's confirm before a 503.
    pub publish_timeout: Duration,
    /// `INGRESS_PUBLISH_CHANNELS`: confirm-mode channels shared by all requests.
    pub publish_channels: usize,
    /// `INGRESS_WORKERS`: HTTP worker threads (default: one per core).
    pub workers: Option<usize>,
    /// `INGRESS_RECONNECT_MAX_MS`: cap of the broker reconnect backoff.
    pub reconnect_max: Duration,
    /// The WebSockets to Dojo (opened for locations with `websocket = true`).
    pub ws: WsSettings,
}

/// `INGRESS_ADDR`: the HTTP listen address, `host:port` (default `0.0.0.0:8080`).
/// Read alone by `ingress healthcheck`, which needs no channel configured.
pub fn listen_addr(src: &dyn Source) -> String {
    or_default(src, "INGRESS_ADDR", "0.0.0.0:8080")
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&common::settings::Env)
    }

    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        // RabbitMQ allows 2,047 channels on a connection by default (`channel_max`).
        // 0 would refuse every delivery (no confirm arrives in no time).
        let publish_timeout = common::settings::millis(src, "INGRESS_PUBLISH_TIMEOUT_MS", 5_000)?;
        if publish_timeout.is_zero() {
            return Err(ConfigError(
                "INGRESS_PUBLISH_TIMEOUT_MS must be at least 1".into(),
            ));
        }
        let publish_channels = in_range(src, "INGRESS_PUBLISH_CHANNELS", 1usize, 1, 1_024)?;
        let locations_file = optional(src, "DOJO_LOCATIONS_FILE");
        let ws_url = optional(src, "DOJO_WS_URL");
        // Round 1's single location: a socket only with both DOJO_WS_URL and DOJO_API_KEY.
        let single_ws = match (&ws_url, optional(src, "DOJO_API_KEY")) {
            (Some(_), Some(_)) => true,
            (Some(_), None) if locations_file.is_none() => {
                return Err(ConfigError(
                    "DOJO_WS_URL is set but DOJO_API_KEY is not".into(),
                ))
            }
            _ => false,
        };
        let url = ws_url.unwrap_or_else(|| DOJO_WS_URL.to_owned());
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ConfigError(format!(
                "DOJO_WS_URL={url:?} is not a ws:// or wss:// URL"
            )));
        }
        let handshakes_per_sec = parsed(src, "INGRESS_WS_HANDSHAKES_PER_SEC", 20u32)?;
        if handshakes_per_sec == 0 {
            return Err(ConfigError(
                "INGRESS_WS_HANDSHAKES_PER_SEC must be at least 1".into(),
            ));
        }
        let ping_interval = common::settings::millis(src, "INGRESS_WS_PING_MS", 20_000)?
            .max(Duration::from_millis(10));
        let ws = WsSettings {
            url,
            software_house_id: optional(src, "DOJO_SOFTWARE_HOUSE_ID"),
            reseller_id: optional(src, "DOJO_RESELLER_ID"),
            ping_interval,
            max_in_flight: in_range(src, "INGRESS_WS_MAX_IN_FLIGHT", 256usize, 1, 65_536)?,
            reconnect_max: common::settings::millis(src, "INGRESS_WS_RECONNECT_MAX_MS", 30_000)?,
            stable_after: common::settings::millis(src, "INGRESS_WS_STABLE_MS", 30_000)?,
            handshakes_per_sec,
            lease_retry: common::settings::millis(src, "INGRESS_WS_LEASE_RETRY_MS", 2_000)?
                .max(Duration::from_millis(10)),
            lease_grace: common::settings::millis(src, "INGRESS_WS_LEASE_GRACE_MS", 30_000)?,
        };
        let amqp_url = or_default(src, "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        common::amqp::Brokers::parse(&amqp_url)?;
        let locations = Locations::from_source(src, single_ws)?;
        // A misspelt variable would otherwise give a server that answers 404 to every
        // delivery and says nothing about why.
        let any_channel = locations
            .iter()
            .any(|l| !l.webhook_secrets.is_empty() || l.rest.is_some() || l.websocket);
        if !any_channel && !parsed(src, "INGRESS_ALLOW_NO_CHANNELS", false)? {
            return Err(ConfigError(
                "no channel configured: set DOJO_WEBHOOK_SECRETS, DOJO_REST_USERNAME and \
                 DOJO_REST_PASSWORD, or DOJO_WS_URL and DOJO_API_KEY (or DOJO_LOCATIONS_FILE); \
                 INGRESS_ALLOW_NO_CHANNELS=true starts anyway"
                    .into(),
            ));
        }
        Ok(Self {
            locations,
            locations_file,
            locations_poll: common::settings::millis(src, "INGRESS_LOCATIONS_POLL_MS", 1_000)?
                .max(Duration::from_millis(10)),
            ws,
            addr: listen_addr(src),
            amqp_url,
            publish_timeout,
            publish_channels,
            workers: optional(src, "INGRESS_WORKERS")
                // actix-web's limit.
                .map(|_| in_range(src, "INGRESS_WORKERS", 1usize, 1, 512))
                .transpose()?,
            reconnect_max: common::settings::millis(src, "INGRESS_RECONNECT_MAX_MS", 5_000)?,
        })
    }

    /// Whether any location keeps a WebSocket to Dojo.
    pub fn any_websocket(&self) -> bool {
        self.locations.iter().any(|l| l.websocket)
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
    fn without_any_channel_it_refuses_to_start_unless_told() {
        let err = Settings::from_source(&src(&[("DOJO_WEBHOOK_SECRET", "typo")])).unwrap_err();
        assert!(err.to_string().contains("no channel configured"), "{err}");
        assert!(Settings::from_source(&src(&[("INGRESS_ALLOW_NO_CHANNELS", "true")])).is_ok());
        assert!(Settings::from_source(&src(&[("DOJO_WEBHOOK_SECRETS", "s")])).is_ok());
    }

    #[test]
    fn a_malformed_broker_url_is_bad_configuration() {
        for url in [
            "amqp://guest:guest@127.0.0.1:notaport/%2f",
            "http://x",
            "amqp://[::1/x",
        ] {
            let err =
                Settings::from_source(&src(&[("AMQP_URL", url), ("DOJO_WEBHOOK_SECRETS", "s")]))
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains("AMQP_URL") && !err.contains("guest:guest"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn zero_counts_and_timeouts_are_refused_with_their_name() {
        // INGRESS_WORKERS=0 panicked in actix; a publish timeout of 0 refused every delivery.
        for name in [
            "INGRESS_WORKERS",
            "INGRESS_PUBLISH_TIMEOUT_MS",
            "INGRESS_PUBLISH_CHANNELS",
        ] {
            let err = Settings::from_source(&src(&[(name, "0"), ("DOJO_WEBHOOK_SECRETS", "s")]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("configuration: {name} must be")),
                "{err}"
            );
        }
        // And the ceilings: actix's 512 workers, the broker's channels.
        for (name, value) in [
            ("INGRESS_WORKERS", "600"),
            ("INGRESS_PUBLISH_CHANNELS", "2048"),
        ] {
            let err = Settings::from_source(&src(&[(name, value), ("DOJO_WEBHOOK_SECRETS", "s")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{name} must be from 1 to")), "{err}");
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::from_source(&src(&[("INGRESS_ALLOW_NO_CHANNELS", "true")])).unwrap();
        assert_eq!(s.addr, "0.0.0.0:8080");
        assert_eq!(s.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        let default = s.locations.get("default").unwrap();
        assert!(default.rest.is_none());
        assert!(default.webhook_secrets.is_empty());
    }

    #[test]
    fn secrets_split_on_commas_and_never_print() {
        let s = Settings::from_source(&src(&[("DOJO_WEBHOOK_SECRETS", "a, b,,c")])).unwrap();
        assert_eq!(s.locations.get("default").unwrap().webhook_secrets.len(), 3);
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
        let s = Settings::from_source(&src(&[
            ("DOJO_API_KEY", "sk_sandbox_x"),
            ("INGRESS_ALLOW_NO_CHANNELS", "true"),
        ]))
        .unwrap();
        assert!(
            !s.any_websocket(),
            "a key alone (for `register`) opens no socket"
        );
        let s = Settings::from_source(&src(&[
            ("DOJO_WS_URL", "wss://eu.ws.dojo.tech/epos"),
            ("DOJO_API_KEY", "sk_sandbox_x"),
        ]))
        .unwrap();
        assert!(s.any_websocket());
        assert!(!format!("{s:?}").contains("sk_sandbox_x"));
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
        assert!(err.to_string().contains("go together"), "{err}");
        let err = Settings::from_source(&src(&[
            ("DOJO_REST_USERNAME", "a:b"),
            ("DOJO_REST_PASSWORD", "x"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("':'"));
    }
}
