//! The outbox's sequencer (migration 0007): numbers committed payment updates, so
//! writers never wait on each other for the feed's order.
//!
//! Writers (the triggers on `payment_intents`) insert into `payment_updates_pending`
//! and notify `payment_updates_pending`. Here, on that notification (through the
//! process's [`listener`](super::listener)) or every `FEED_POLL_MS`, one call of
//! `payment_updates_number` takes [`SEQUENCER_LOCK`], moves up to [`BATCH`] pending rows
//! into `payment_updates` with `seq` = `payment_updates_sequence.last` + 1, + 2, ... in
//! `id` order, notifies `payment_updates` with the highest `seq`, and commits. Every
//! processor runs one; the lock makes them take turns, and a statement after the lock
//! sees every earlier turn's commit, so no row is numbered twice and numbers become
//! visible in order. A crash mid-transaction rolls back: the rows stay pending for the
//! next turn. What a turn numbered goes straight to this process's streams
//! ([`Hub::numbered`]); other processes read it on the notification.

use super::listener::Hub;
use super::store::PaymentUpdate;
use crate::Worker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The transaction-level advisory lock sequencers take turns on (taken inside
/// `payment_updates_number`; its value is written there too).
pub const SEQUENCER_LOCK: i64 = 7_310_577_158_493_101_313;
/// The most pending updates numbered in one transaction.
pub const BATCH: i64 = 1000;

/// The least time from the end of one round of turns to the next (a round is one turn,
/// or several back to back while [`BATCH`] or more updates are pending). Wake-ups
/// during it (a busy processor commits a batch every few milliseconds) coalesce into
/// one turn, so updates are numbered in fewer, larger turns: each turn has a fixed cost
/// of about half a millisecond of PostgreSQL's time (docs/PERFORMANCE.md). Adds at most
/// this much to an update's commit-to-till latency.
pub const TURN_GAP: Duration = Duration::from_millis(5);

/// Numbers pending updates whenever woken, until `stop`.
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let hub: &Hub = &worker.feed;
    let mut pending = hub.pending();
    let mut poll = tokio::time::interval(worker.settings.feed.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::time::sleep(TURN_GAP).await;
        tokio::select! {
            _ = pending.changed() => {}
            _ = poll.tick() => {}
            _ = stop.changed() => return,
        }
        loop {
            hub.turn_started();
            match number(&worker.pool).await {
                Ok(updates) => {
                    let count = updates.len() as i64;
                    worker.metrics.feed_numbered.inc_by(count as u64);
                    // This process's streams get them at once, without a read.
                    hub.numbered(updates);
                    if count < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    hub.numbered(Vec::new());
                    tracing::warn!(error = %e, "numbering payment updates failed; trying again at the next wake-up");
                    break;
                }
            }
        }
    }
}

/// One turn (`payment_updates_number`, migration 0007: one round trip): numbers up to
/// [`BATCH`] committed pending updates and returns them in `seq` order (consecutive
/// numbers), empty if none was pending.
pub async fn number(pool: &sqlx::PgPool) -> Result<Vec<PaymentUpdate>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM payment_updates_number($1)")
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
    let mut updates = rows
        .iter()
        .map(PaymentUpdate::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    updates.sort_by_key(|u| u.seq);
    Ok(updates)
}
