//! One `LISTEN payment_updates` connection per process (application_name
//! `dojo-feed-listener`), fanning out wake-ups to every stream through a `watch` of the
//! latest notified `seq`. A notification is only a hint: each stream reads the rows
//! from its own cursor, and also polls every `FEED_POLL_MS`, so a notification lost
//! (the connection dropped, a reconnect) delays an update, never loses it. Retention is
//! pruned here too.

use crate::Worker;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `application_name` of the listening connection (find it in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "dojo-feed-listener";
/// The NOTIFY channel the outbox trigger signals on.
pub const CHANNEL: &str = "payment_updates";

/// The wake-ups streams wait on: the highest `seq` notified so far (0 at start), bumped
/// on every reconnect too.
pub struct Hub {
    latest: watch::Sender<i64>,
    /// True once the process stops: streams end (clients resume elsewhere), so a
    /// graceful shutdown does not wait for them.
    closing: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            latest: watch::channel(0).0,
            closing: watch::channel(false).0,
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every stream of this process.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn wake(&self, seq: i64) {
        // `send_modify` wakes every receiver even when the value stays the same.
        self.latest.send_modify(|l| *l = (*l).max(seq));
    }
}

async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Listens until `stop`; reconnects after any failure (streams keep polling meanwhile).
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let hub = &worker.feed;
    loop {
        let mut listener = match listen(&worker.settings.database_url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "feed listener cannot connect; streams poll meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        // Whatever was notified while not listening is read now.
        hub.wake(0);
        loop {
            tokio::select! {
                got = listener.try_recv() => match got {
                    Ok(Some(n)) => hub.wake(n.payload().parse().unwrap_or(0)),
                    Ok(None) | Err(_) => {
                        tracing::warn!("feed listener connection lost; reconnecting");
                        worker.metrics.feed_listener_reconnects.inc();
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Prunes the outbox past `FEED_RETENTION` once a minute and sets the oldest-kept gauges.
pub async fn prune(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(60).min(worker.settings.feed.retention);
    loop {
        match super::store::prune(&worker.pool, worker.settings.feed.retention).await {
            Ok(oldest) => {
                let (seq, age) = oldest.unwrap_or((0, 0.0));
                worker.metrics.feed_oldest_seq.set(seq);
                worker.metrics.feed_oldest_age.set(age as i64);
            }
            Err(e) => tracing::warn!(error = %e, "pruning the payment feed failed; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
