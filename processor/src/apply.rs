//! Applying one event to the payment records, in one PostgreSQL transaction.
//!
//! The `dojo_events` row is inserted first: its primary key `(account_id, event_id)` is
//! the dedupe truth, and a concurrent duplicate blocks on it until the first commits,
//! then finds it. The payment intent row is then locked and changed per [`crate::rule`],
//! in the same transaction, so a duplicate can never be applied twice, whatever Redis
//! knows.

use crate::rule::{decide, Change, Current, Decision, Outcome, Stamp};
use chrono::{DateTime, Utc};
use common::{Channel, DojoEvent};
use sqlx::{PgConnection, PgPool, Row};

/// An event as it came off the queue.
pub struct Incoming<'a> {
    pub event: &'a DojoEvent,
    pub channel: Channel,
    pub received_at: DateTime<Utc>,
    /// The event JSON exactly as Dojo sent it.
    pub payload: &'a str,
}

pub async fn apply(pool: &PgPool, incoming: &Incoming<'_>) -> Result<Outcome, sqlx::Error> {
    let event = incoming.event;
    let change = Change::of(event);
    let mut tx = pool.begin().await?;
    let provisional = if change.is_some() {
        Outcome::Applied
    } else {
        Outcome::Ignored
    };
    if !insert_event(&mut tx, incoming, provisional).await? {
        tx.rollback().await?;
        return Ok(Outcome::Duplicate);
    }
    let outcome = match change {
        None => Outcome::Ignored,
        Some(change) => apply_change(&mut tx, &event.account_id, &change).await?,
    };
    if outcome == Outcome::Stale {
        sqlx::query(
            "UPDATE dojo_events SET outcome = 'stale' WHERE account_id = $1 AND event_id = $2",
        )
        .bind(&event.account_id)
        .bind(&event.id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Inserts the event row; false if it was already there (a duplicate).
async fn insert_event(
    conn: &mut PgConnection,
    incoming: &Incoming<'_>,
    outcome: Outcome,
) -> Result<bool, sqlx::Error> {
    let e = incoming.event;
    let inserted = sqlx::query(
        "INSERT INTO dojo_events (account_id, event_id, event_type, payment_intent_id, payment_status,
                                  capture_mode, created_at, received_at, channel, outcome, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
         ON CONFLICT (account_id, event_id) DO NOTHING
         RETURNING 1",
    )
    .bind(&e.account_id)
    .bind(&e.id)
    .bind(e.event.as_str())
    .bind(e.data.payment_intent_id.as_deref())
    .bind(e.data.payment_status.as_ref().map(|s| s.as_str()))
    .bind(e.data.capture_mode.as_ref().map(|c| c.as_str()))
    .bind(e.created_at.as_utc())
    .bind(incoming.received_at)
    .bind(incoming.channel.as_str())
    .bind(outcome.as_str())
    .bind(incoming.payload)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(inserted.is_some())
}

async fn lock_current(conn: &mut PgConnection, id: &str) -> Result<Option<Current>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT status, capture_mode, status_changed_ns, status_stage, last_event_id
         FROM payment_intents WHERE payment_intent_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(Current {
            status: r.try_get("status")?,
            capture_mode: r.try_get("capture_mode")?,
            stamp: Stamp {
                nanos: r.try_get("status_changed_ns")?,
                stage: r.try_get("status_stage")?,
                event_id: r.try_get("last_event_id")?,
            },
        })
    })
    .transpose()
}

async fn apply_change(
    conn: &mut PgConnection,
    account_id: &str,
    change: &Change,
) -> Result<Outcome, sqlx::Error> {
    let mut current = lock_current(conn, &change.payment_intent_id).await?;
    loop {
        match decide(current.as_ref(), change) {
            Decision::Stale => return Ok(Outcome::Stale),
            Decision::Update(next) => {
                write_intent(conn, account_id, &change.payment_intent_id, &next, false).await?;
                return Ok(Outcome::Applied);
            }
            Decision::Insert(next) => {
                if write_intent(conn, account_id, &change.payment_intent_id, &next, true).await? {
                    return Ok(Outcome::Applied);
                }
                // Another transaction created the row meanwhile: decide against it.
                current = lock_current(conn, &change.payment_intent_id).await?;
            }
        }
    }
}

/// Inserts (if `create`, returning false when the row already exists) or updates a row.
async fn write_intent(
    conn: &mut PgConnection,
    account_id: &str,
    id: &str,
    next: &Current,
    create: bool,
) -> Result<bool, sqlx::Error> {
    let sql = if create {
        "INSERT INTO payment_intents (payment_intent_id, account_id, status, capture_mode,
                status_changed_at, status_changed_ns, status_stage, last_event_id)
         VALUES ($1, $2, $3, $4, $8, $5, $6, $7)
         ON CONFLICT (payment_intent_id) DO NOTHING
         RETURNING 1"
    } else {
        "UPDATE payment_intents SET account_id = $2, status = $3, capture_mode = $4,
                status_changed_at = $8, status_changed_ns = $5,
                status_stage = $6, last_event_id = $7, updated_at = now()
         WHERE payment_intent_id = $1
         RETURNING 1"
    };
    let done = sqlx::query(sql)
        .bind(id)
        .bind(account_id)
        .bind(&next.status)
        .bind(next.capture_mode.as_deref())
        .bind(next.stamp.nanos)
        .bind(next.stamp.stage)
        .bind(&next.stamp.event_id)
        .bind(DateTime::<Utc>::from_timestamp_nanos(next.stamp.nanos))
        .fetch_optional(&mut *conn)
        .await?;
    Ok(done.is_some())
}
