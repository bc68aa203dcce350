//! The payment feed (docs/FEED.md): what tills hear about payments.
//!
//! - the outbox is written by a trigger on `payment_intents` (migrations 0006, 0007), in
//!   the transaction of every change, as a pending update; the [`sequencer`] numbers
//!   committed ones into `payment_updates`, so they become visible in `seq` order
//!   without writers waiting on each other;
//! - [`store`]: reading pages from a cursor, retention;
//! - [`listener`]: one `LISTEN` connection per process waking the streams, plus a
//!   fallback poll; [`routes`]: the cursor API and the Server-Sent Events stream, with
//!   per-location tokens.

pub mod listener;
pub mod routes;
pub mod sequencer;
pub mod sse;
pub mod store;

use common::settings::{ConfigError, Source};
use std::time::Duration;

/// `FEED_*` settings.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// `FEED_RETENTION` (default `7d`): updates older than this are pruned.
    pub retention: Duration,
    /// `FEED_POLL_MS` (default 1000): the fallback poll of every stream, so a lost
    /// notification delays an update by at most this long.
    pub poll: Duration,
    /// `FEED_HEARTBEAT_SECS` (default 15): comment lines that keep proxies from closing
    /// an idle stream.
    pub heartbeat: Duration,
    /// `FEED_CLIENT_BUFFER` (default 1024): messages queued for one stream client; a
    /// client that lets it fill is cut off (it resumes with `Last-Event-ID`).
    pub client_buffer: usize,
    /// `FEED_RETRY_MS` (default 2000): the `retry:` sent to stream clients.
    pub retry: Duration,
}

impl FeedSettings {
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let text = common::settings::or_default(src, "FEED_RETENTION", "7d");
        let retention = crate::retry::parse_delay(&text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ConfigError(format!(
                    "FEED_RETENTION {text:?}: a duration like 12h or 7d"
                ))
            })?;
        let poll = common::settings::millis(src, "FEED_POLL_MS", 1000)?;
        let heartbeat = common::settings::secs(src, "FEED_HEARTBEAT_SECS", 15)?;
        // Bounded: each stream's queue holds up to this many updates.
        let client_buffer =
            common::settings::in_range(src, "FEED_CLIENT_BUFFER", 1024usize, 2, 1_000_000)?;
        if poll.is_zero() || heartbeat.is_zero() {
            return Err(ConfigError(
                "FEED_POLL_MS and FEED_HEARTBEAT_SECS must be at least 1".into(),
            ));
        }
        Ok(Self {
            retention,
            poll,
            heartbeat,
            client_buffer,
            retry: common::settings::millis(src, "FEED_RETRY_MS", 2000)?,
        })
    }
}

/// Keeps `feed_locations` in step with the locations served (`Worker::locations`, which
/// follows `DOJO_LOCATIONS_FILE`): after each reload, the accounts of added or changed
/// locations are recorded, so the updates of their payments carry their location from
/// then on. A failed write is tried again every second until it succeeds or `stop`.
pub async fn follow_locations(
    worker: std::sync::Arc<crate::Worker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = worker.locations.subscribe();
    changes.mark_unchanged();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        loop {
            let locations = changes.borrow_and_update().clone();
            match sync_locations(&worker.pool, &locations).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the locations of the payment feed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}

/// Records which location each account belongs to, for the trigger (idempotent; run at
/// start). The implicit `default` location has no account: unknown accounts are
/// `default`.
pub async fn sync_locations(
    pool: &sqlx::PgPool,
    locations: &common::locations::Locations,
) -> Result<(), sqlx::Error> {
    let (accounts, ids): (Vec<&str>, Vec<&str>) = locations
        .iter()
        .filter_map(|l| Some((l.account_id.as_deref()?, l.id.as_str())))
        .unzip();
    sqlx::query(
        "INSERT INTO feed_locations (account_id, location_id)
         SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (account_id) DO UPDATE SET location_id = EXCLUDED.location_id",
    )
    .bind(&accounts)
    .bind(&ids)
    .execute(pool)
    .await?;
    Ok(())
}
