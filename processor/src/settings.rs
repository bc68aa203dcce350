//! Processor configuration, from the environment variables named in CONTRACT.md plus a
//! few optional tuning knobs. Validated once at start.

use common::settings::{optional, or_default, parsed, ConfigError, Secret, Source};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `PROCESSOR_ADDR`; port 0 picks a free port (tests).
    pub addr: String,
    /// `AMQP_URL`: one URL, or one per cluster node, comma-separated
    /// (`common::amqp::Brokers`).
    pub amqp_url: String,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `DATABASE_URL`; the database is created if missing, migrations applied at start.
    pub database_url: String,
    /// `PROCESSOR_API_TOKEN`; `None`: the `/v1` read API answers 404.
    pub api_token: Option<Secret>,
    /// `REDIS_KEY_PREFIX` (default `dojo:`): namespaces the dedupe keys.
    pub redis_prefix: String,
    /// `PROCESSOR_PREFETCH`: unacked deliveries the broker may push per channel.
    pub prefetch: u16,
    /// `PROCESSOR_CHANNELS`: consuming channels, each committing one batch at a time.
    pub channels: usize,
    /// `PROCESSOR_BATCH`: most deliveries applied in one transaction.
    pub batch: usize,
    /// `PROCESSOR_DB_POOL`: PostgreSQL connections.
    pub db_pool: u32,
    /// `PROCESSOR_DB_LOCK_TIMEOUT_MS` and `PROCESSOR_DB_STATEMENT_TIMEOUT_MS`: the
    /// longest any lock wait and any statement may take.
    pub db_timeouts: crate::db::Timeouts,
    /// `PROCESSOR_CLAIM_LEASE_MS`: how long a Redis `processing` claim lives if its holder dies.
    pub claim_lease: Duration,
    /// `PROCESSOR_DONE_TTL_SECS`: how long the Redis `done` marker short-cuts duplicates.
    pub done_ttl: Duration,
    /// `PROCESSOR_RETRY_DELAYS` (default `1s,5s,30s,2m,10m`) and `PROCESSOR_RETRY_ATTEMPTS`
    /// (default 30): when transient failures are tried again.
    pub retry: crate::retry::Schedule,
    /// `DOJO_LOCATIONS_FILE`, else `DOJO_API_KEY` as location `default` (any account):
    /// whose key fetches an intent's details, whose till tokens read the feed: the set
    /// at start (the running set is `Worker::locations`, which follows the file).
    pub locations: common::locations::Locations,
    /// `DOJO_LOCATIONS_FILE`, re-read on SIGHUP and when it changes.
    pub locations_file: Option<String>,
    /// `PROCESSOR_LOCATIONS_POLL_MS` (default 1000): how often the locations file is
    /// checked for changes.
    pub locations_poll: Duration,
    /// `DOJO_API_URL`, `DOJO_API_VERSION`, `DOJO_API_RATE`, ... (common::dojo_api).
    pub dojo_api: common::dojo_api::ApiConfig,
    /// `ENRICH_*`: the fetches of payment details (crate::enrich).
    pub enrich: crate::enrich::EnrichSettings,
    /// `SWEEP_*`: the periodic reconciliation sweeps (crate::sweep).
    pub sweep: crate::sweep::SweepSettings,
    /// `FEED_*`: the payment feed (crate::feed).
    pub feed: crate::feed::FeedSettings,
    /// `CONSOLE_*`: the ops console (crate::console).
    pub console: crate::console::settings::ConsoleSettings,
}

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `PROCESSOR_ADDR`: the HTTP listen address (health, metrics, read API, feed,
/// console), `host:port` (default `0.0.0.0:8081`). Read alone by `processor healthcheck`.
pub fn listen_addr(src: &dyn Source) -> String {
    or_default(src, "PROCESSOR_ADDR", "0.0.0.0:8081")
}

/// `REDIS_URL`: a URL this Redis client can use (`redis://`, or `unix://` for a socket).
/// The client is built without TLS and without Sentinel, so `rediss://` and
/// `redis+sentinel://` are refused here, at start, instead of silently running without
/// Redis.
fn redis_url(src: &dyn Source) -> Result<String, ConfigError> {
    let url = or_default(src, "REDIS_URL", "redis://127.0.0.1:6379");
    redis::Client::open(url.as_str()).map_err(|e| {
        ConfigError(format!(
            "REDIS_URL is not a Redis URL this processor can use (redis:// or unix://, no TLS or Sentinel): {e}"
        ))
    })?;
    Ok(url)
}

/// `AMQP_URL` alone, checked as [`Settings`] checks it (`processor dlq` needs only the
/// broker).
///
/// # Errors
/// A URL that is not an AMQP URL list.
pub fn amqp_url(src: &dyn Source) -> Result<String, ConfigError> {
    let url = or_default(src, "AMQP_URL", DEFAULT_AMQP_URL);
    common::amqp::Brokers::parse(&url)?;
    Ok(url)
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&common::settings::Env)
    }

    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        // RabbitMQ allows 2,047 channels on a connection by default (`channel_max`).
        let channels = common::settings::in_range(src, "PROCESSOR_CHANNELS", 8usize, 1, 1_024)?;
        // A batch takes only deliveries already prefetched (at most 65,535, a u16).
        let batch = common::settings::in_range(src, "PROCESSOR_BATCH", 64usize, 1, 65_535)?;
        let prefetch = common::settings::at_least(src, "PROCESSOR_PREFETCH", 256u16, 1)?;
        // 0 means "no limit" to PostgreSQL: exactly what these must not be; and
        // PostgreSQL takes at most 2^31 - 1 ms (about 24 days).
        let db_timeout = |name: &str, default: u64| {
            common::settings::in_range(src, name, default, 1, i32::MAX as u64)
                .map(Duration::from_millis)
        };
        let db_timeouts = crate::db::Timeouts {
            lock: db_timeout("PROCESSOR_DB_LOCK_TIMEOUT_MS", 2_000)?,
            statement: db_timeout("PROCESSOR_DB_STATEMENT_TIMEOUT_MS", 15_000)?,
        };
        // Redis's PX and EX refuse 0: every claim and marker would fail.
        let claim_lease = common::settings::millis(src, "PROCESSOR_CLAIM_LEASE_MS", 30_000)?;
        let done_ttl = common::settings::secs(src, "PROCESSOR_DONE_TTL_SECS", 7 * 24 * 3600)?;
        for (name, d) in [
            ("PROCESSOR_CLAIM_LEASE_MS", claim_lease),
            ("PROCESSOR_DONE_TTL_SECS", done_ttl),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        let amqp_url = amqp_url(src)?;
        let database_url = or_default(
            src,
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/dojo_events",
        );
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError(
                "DATABASE_URL must be a PostgreSQL URL (postgres:// or postgresql://)".into(),
            ));
        }
        let api_token = optional(src, "PROCESSOR_API_TOKEN").map(Secret::new);
        let locations = common::locations::Locations::from_source(src, false)?;
        feed_tokens_apart(&locations, api_token.as_ref())?;
        Ok(Self {
            addr: listen_addr(src),
            amqp_url,
            redis_url: redis_url(src)?,
            database_url,
            api_token,
            redis_prefix: or_default(src, "REDIS_KEY_PREFIX", "dojo:"),
            prefetch,
            channels,
            batch,
            db_pool: common::settings::at_least(src, "PROCESSOR_DB_POOL", 16u32, 1)?,
            db_timeouts,
            claim_lease,
            done_ttl,
            retry: crate::retry::Schedule::parse(
                &or_default(src, "PROCESSOR_RETRY_DELAYS", "1s,5s,30s,2m,10m"),
                parsed(src, "PROCESSOR_RETRY_ATTEMPTS", 30u32)?,
            )?,
            locations,
            locations_file: common::settings::optional(src, "DOJO_LOCATIONS_FILE"),
            locations_poll: common::settings::millis(src, "PROCESSOR_LOCATIONS_POLL_MS", 1_000)?
                .max(Duration::from_millis(10)),
            dojo_api: common::dojo_api::ApiConfig::from_source(src)?,
            enrich: crate::enrich::EnrichSettings::from_source(src)?,
            sweep: crate::sweep::SweepSettings::from_source(src)?,
            feed: crate::feed::FeedSettings::from_source(src)?,
            console: crate::console::settings::ConsoleSettings::from_source(src)?,
        })
    }
}

/// Refuses locations one of whose till tokens is the global read-API token (its tills
/// would read every location): at start, and for every reloaded file.
///
/// # Errors
/// The location and field, never the token.
pub fn feed_tokens_apart(
    locations: &common::locations::Locations,
    api_token: Option<&Secret>,
) -> Result<(), ConfigError> {
    let Some(token) = api_token else {
        return Ok(());
    };
    match locations
        .iter()
        .find(|l| l.feed_tokens.iter().any(|t| t.expose() == token.expose()))
    {
        Some(l) => Err(ConfigError(format!(
            "location {:?}: field `feed_tokens`: a token equals PROCESSOR_API_TOKEN (its tills would read every location)",
            l.id
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::from_source(&HashMap::new()).unwrap();
        assert_eq!(s.addr, "0.0.0.0:8081");
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(
            s.database_url,
            "postgres://postgres@127.0.0.1:5432/dojo_events"
        );
        assert!(s.api_token.is_none());
    }

    #[test]
    fn a_redis_url_the_client_cannot_use_is_refused_at_start() {
        let env = |url: &str| HashMap::from([("REDIS_URL".to_owned(), url.to_owned())]);
        for bad in ["rediss://:hunter2@cache:6380", "http://cache", "not a url"] {
            let Err(e) = Settings::from_source(&env(bad)) else {
                panic!("{bad} accepted");
            };
            let e = e.to_string();
            assert!(e.contains("REDIS_URL"), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "no password in the reason: {e}");
        }
        for good in ["redis://cache:6379/2", "redis://:secret@cache:6379"] {
            assert_eq!(Settings::from_source(&env(good)).unwrap().redis_url, good);
        }
    }

    #[test]
    fn a_database_url_that_is_not_postgresql_is_refused_at_start() {
        let env = |url: &str| HashMap::from([("DATABASE_URL".to_owned(), url.to_owned())]);
        let refused = Settings::from_source(&env("mysql://root@127.0.0.1/x"))
            .err()
            .unwrap();
        assert!(refused.0.contains("PostgreSQL URL"), "{refused}");
        assert!(Settings::from_source(&env("postgresql://u@h/db")).is_ok());
    }

    #[test]
    fn a_feed_token_equal_to_the_global_token_is_refused() {
        let file = std::env::temp_dir().join(format!("tokens-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "[[location]]\nid = \"soho\"\naccount_id = \"acc_soho\"\nfeed_tokens = [\"t1\", \"shared\"]\n",
        )
        .unwrap();
        let path = file.to_string_lossy().into_owned();
        let env = |token: &str| {
            HashMap::from([
                ("DOJO_LOCATIONS_FILE".to_owned(), path.clone()),
                ("PROCESSOR_API_TOKEN".to_owned(), token.to_owned()),
            ])
        };
        let refused = Settings::from_source(&env("shared")).err().unwrap();
        assert!(
            refused.0.contains("\"soho\": field `feed_tokens`"),
            "{refused}"
        );
        assert!(
            !refused.0.contains("shared"),
            "no secret in the message: {refused}"
        );
        assert!(Settings::from_source(&env("global")).is_ok());
        // A reloaded file with such a token is refused whole; the running set stays.
        let running = Settings::from_source(&env("global")).unwrap().locations;
        let directory = common::locations::Directory::new(running);
        let global = Secret::new("shared");
        let refused = common::locations::directory::reload(&path, &directory, &|l| {
            feed_tokens_apart(l, Some(&global))
        })
        .unwrap_err();
        assert!(refused.0.contains("PROCESSOR_API_TOKEN"), "{refused}");
        assert!(directory.current().get("soho").is_some());
        std::fs::write(
            &file,
            "[[location]]\nid = \"leeds\"\naccount_id = \"acc_leeds\"\nfeed_tokens = [\"t2\"]\n",
        )
        .unwrap();
        common::locations::directory::reload(&path, &directory, &|l| {
            feed_tokens_apart(l, Some(&global))
        })
        .unwrap();
        assert!(directory.current().get("leeds").is_some(), "not vacuous");
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn database_waits_are_bounded_by_default_and_never_unbounded() {
        let s = Settings::from_source(&HashMap::new()).unwrap();
        assert_eq!(s.db_timeouts.lock, Duration::from_secs(2));
        assert_eq!(s.db_timeouts.statement, Duration::from_secs(15));
        let src: HashMap<String, String> =
            [("PROCESSOR_DB_LOCK_TIMEOUT_MS".into(), "0".into())].into();
        assert!(Settings::from_source(&src).is_err());
    }

    #[test]
    fn zero_concurrency_is_refused() {
        // A reason, not a panic later (a pool of 0 panicked when it was built).
        for name in [
            "PROCESSOR_CHANNELS",
            "PROCESSOR_DB_POOL",
            "PROCESSOR_BATCH",
            "PROCESSOR_PREFETCH",
        ] {
            let src: HashMap<String, String> = [(name.into(), "0".into())].into();
            let err = Settings::from_source(&src).unwrap_err();
            assert!(err.0.contains(name), "{}", err.0);
        }
        // Sizes with a ceiling: refused at start, not met as a broker refusal or an
        // allocation later.
        for (name, value) in [
            ("PROCESSOR_CHANNELS", "5000"),
            ("PROCESSOR_BATCH", "65536"),
            ("PROCESSOR_DB_LOCK_TIMEOUT_MS", "4294967296000"),
            ("FEED_CLIENT_BUFFER", "18446744073709551615"),
            ("FEED_CLIENT_BUFFER", "1"),
        ] {
            let src: HashMap<String, String> = [(name.into(), value.into())].into();
            let err = Settings::from_source(&src).unwrap_err();
            assert!(err.0.contains(&format!("{name} must be from")), "{}", err.0);
        }
    }
}
