//! The outbox's sequencer (migration 0007): numbers committed payment updates, so
//! writers never wait on each other for the feed's order.
//!
//! Writers (the trigger on `payment_intents`) insert into `payment_updates_pending` and
//! notify `payment_updates_pending`. Here, on that notification (through the process's
//! [`listener`](super::listener)) or every `FEED_POLL_MS`, one transaction takes
//! [`SEQUENCER_LOCK`], moves up to [`BATCH`] pending rows into `payment_updates` with
//! `seq` = `payment_updates_sequence.last` + 1, + 2, ... in `id` order, notifies
//! `payment_updates` with the highest `seq`, and commits. Every processor runs one;
//! the lock makes them take turns, and a statement after the lock sees every sequencer
//! commit before it, so no row is numbered twice and numbers become visible in order.
//! A crash mid-transaction rolls back: the rows stay pending for the next turn.

use super::listener::Hub;
use crate::Worker;
use std::sync::Arc;
use tokio::sync::watch;

/// The transaction-level advisory lock sequencers take turns on.
pub const SEQUENCER_LOCK: i64 = 7_310_577_158_493_101_313;
/// The most pending updates numbered in one transaction.
pub const BATCH: i64 = 1000;

/// Numbers pending updates whenever woken, until `stop`.
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let hub: &Hub = &worker.feed;
    let mut pending = hub.pending();
    let mut poll = tokio::time::interval(worker.settings.feed.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pending.changed() => {}
            _ = poll.tick() => {}
            _ = stop.changed() => return,
        }
        loop {
            match number(&worker.pool).await {
                Ok((count, highest)) => {
                    if count > 0 {
                        worker.metrics.feed_numbered.inc_by(count as u64);
                        // This process's streams need not wait for the notification.
                        hub.wake(highest);
                    }
                    if count < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "numbering payment updates failed; trying again at the next wake-up");
                    break;
                }
            }
        }
    }
}

/// One turn: numbers up to [`BATCH`] committed pending updates. Returns how many, and
/// the highest `seq` given (0 if none).
pub async fn number(pool: &sqlx::PgPool) -> Result<(i64, i64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEQUENCER_LOCK)
        .execute(&mut *tx)
        .await?;
    // A new statement, so a new snapshot: it sees what the previous holder committed.
    let (count, highest): (i64, Option<i64>) = sqlx::query_as(
        "WITH batch AS (
             DELETE FROM payment_updates_pending
             -- `= ANY(ARRAY(...))`: an index lookup of these ids (`IN (...)` was
             -- planned as a scan of the whole table, 250 ms at 70,000 pending).
             WHERE id = ANY(ARRAY(SELECT id FROM payment_updates_pending ORDER BY id LIMIT $1))
             RETURNING *
         ), counter AS (
             UPDATE payment_updates_sequence SET last = last + (SELECT count(*) FROM batch)
             WHERE EXISTS (SELECT 1 FROM batch)
             RETURNING last - (SELECT count(*) FROM batch) AS start
         ), numbered AS (
             INSERT INTO payment_updates (seq, location_id, account_id, payment_intent_id,
                                          status, capture_mode, amount_value, amount_currency,
                                          total_value, total_currency, refunded_amount,
                                          reference, order_id, cause, committed_at)
             SELECT counter.start + row_number() OVER (ORDER BY b.id), b.location_id,
                    b.account_id, b.payment_intent_id, b.status, b.capture_mode,
                    b.amount_value, b.amount_currency, b.total_value, b.total_currency,
                    b.refunded_amount, b.reference, b.order_id, b.cause, b.committed_at
             FROM batch b, counter
             RETURNING seq
         )
         SELECT count(*), max(seq) FROM numbered",
    )
    .bind(BATCH)
    .fetch_one(&mut *tx)
    .await?;
    let highest = highest.unwrap_or(0);
    if count > 0 {
        // Only a pointer: listeners read the rows from the table.
        sqlx::query("SELECT pg_notify('payment_updates', $1)")
            .bind(highest.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((count, highest))
}
