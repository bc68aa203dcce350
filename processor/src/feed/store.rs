//! Reading the outbox from a cursor, and pruning it (retention).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use utoipa::ToSchema;

/// An amount in minor units with its currency.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedMoney {
    #[schema(example = 1500)]
    pub value: i64,
    #[schema(example = "GBP")]
    pub currency_code: String,
}

/// One change of a payment record, as tills receive it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentUpdate {
    /// Position in the feed: increasing, with gaps; the cursor (`after`, `Last-Event-ID`).
    #[schema(example = 42)]
    pub seq: i64,
    /// The location id (`default` when the account is in no location).
    pub location: String,
    pub account_id: String,
    pub payment_intent_id: String,
    /// The record's status after the change.
    #[schema(example = "Captured")]
    pub status: String,
    pub capture_mode: Option<String>,
    pub amount: Option<FeedMoney>,
    pub total_amount: Option<FeedMoney>,
    /// Minor units.
    pub refunded_amount: Option<i64>,
    pub reference: Option<String>,
    /// `orderDetails.externalId`.
    pub order_id: Option<String>,
    /// The event id that made the change (`reconcile:...` for a repair), or
    /// `snapshot:{paymentIntentId}:{dojoUpdatedAt}` for newer payment details.
    pub cause: String,
    pub committed_at: DateTime<Utc>,
}

/// Which updates a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub location: Option<String>,
    pub payment_intent_id: Option<String>,
    pub order_id: Option<String>,
}

/// What a page read found.
pub enum Page {
    Updates(Vec<PaymentUpdate>),
    /// The cursor is below what retention pruned: updates were missed.
    Gone {
        pruned_upto: i64,
    },
    /// The cursor is beyond the newest update: it came from another database (restored
    /// or replaced), and following it would skip every update up to it.
    Ahead {
        head: i64,
    },
}

fn money(value: Option<i64>, currency: Option<String>) -> Option<FeedMoney> {
    value.zip(currency).map(|(value, currency_code)| FeedMoney {
        value,
        currency_code,
    })
}

/// The updates after `after` (all of them when `None`: from the oldest kept), in `seq`
/// order, at most `limit`.
pub async fn page(
    pool: &PgPool,
    filter: &Filter,
    after: Option<i64>,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, location_id, account_id, payment_intent_id, status, capture_mode,
                amount_value, amount_currency, total_value, total_currency, refunded_amount,
                reference, order_id, cause, committed_at
         FROM payment_updates
         WHERE seq > $1 AND ($2::text IS NULL OR location_id = $2)
           AND ($3::text IS NULL OR payment_intent_id = $3) AND ($4::text IS NULL OR order_id = $4)
         ORDER BY seq LIMIT $5",
    )
    .bind(after.unwrap_or(0))
    .bind(filter.location.as_deref())
    .bind(filter.payment_intent_id.as_deref())
    .bind(filter.order_id.as_deref())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    // Read after the rows: a prune committed in between shows here, and so does every
    // update numbered before the rows were read (numbers only grow).
    if let Some(after) = after {
        let (upto, head): (i64, i64) = sqlx::query_as(
            "SELECT upto, GREATEST((SELECT COALESCE(max(seq), 0) FROM payment_updates), upto)
             FROM payment_updates_pruned",
        )
        .fetch_one(pool)
        .await?;
        if after < upto {
            return Ok(Page::Gone { pruned_upto: upto });
        }
        if rows.is_empty() && after > head {
            return Ok(Page::Ahead { head });
        }
    }
    rows.iter()
        .map(PaymentUpdate::from_row)
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Page::Updates)
}

impl PaymentUpdate {
    /// A row of `payment_updates` (every column).
    pub fn from_row(r: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(PaymentUpdate {
            seq: r.try_get("seq")?,
            location: r.try_get("location_id")?,
            account_id: r.try_get("account_id")?,
            payment_intent_id: r.try_get("payment_intent_id")?,
            status: r.try_get("status")?,
            capture_mode: r.try_get("capture_mode")?,
            amount: money(r.try_get("amount_value")?, r.try_get("amount_currency")?),
            total_amount: money(r.try_get("total_value")?, r.try_get("total_currency")?),
            refunded_amount: r.try_get("refunded_amount")?,
            reference: r.try_get("reference")?,
            order_id: r.try_get("order_id")?,
            cause: r.try_get("cause")?,
            committed_at: r.try_get("committed_at")?,
        })
    }
}

impl Filter {
    pub fn matches(&self, u: &PaymentUpdate) -> bool {
        self.location.as_ref().is_none_or(|l| *l == u.location)
            && self
                .payment_intent_id
                .as_ref()
                .is_none_or(|p| *p == u.payment_intent_id)
            && self
                .order_id
                .as_ref()
                .is_none_or(|o| u.order_id.as_ref() == Some(o))
    }
}

/// The highest `seq` visible now (or pruned): every update up to it is visible too,
/// since updates become visible in `seq` order (the sequencer, migration 0007).
pub async fn head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT GREATEST((SELECT COALESCE(max(seq), 0) FROM payment_updates),
                         (SELECT upto FROM payment_updates_pruned))",
    )
    .fetch_one(pool)
    .await
}

/// The highest `seq` retention has pruned (0: none).
pub async fn pruned_upto(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT upto FROM payment_updates_pruned")
        .fetch_one(pool)
        .await
}

/// Most updates one pruning statement deletes.
const PRUNE_BATCH: i64 = 10_000;

/// Deletes the updates older than `retention`, oldest `seq` first, up to the first one
/// that is younger (so no index on `committed_at` is needed: one less index entry per
/// update on the ingestion path), and moves the pruned mark; returns the oldest kept
/// `seq` and its age in seconds, if any.
pub async fn prune(
    pool: &PgPool,
    retention: std::time::Duration,
) -> Result<Option<(i64, f64)>, sqlx::Error> {
    loop {
        let deleted: i64 = sqlx::query_scalar(
            "WITH old AS (
                 SELECT seq, committed_at FROM payment_updates ORDER BY seq LIMIT $2
             ), young AS (
                 SELECT COALESCE(min(seq), 9223372036854775807) AS seq FROM old
                 WHERE committed_at >= now() - $1 * interval '1 millisecond'
             ), gone AS (
                 DELETE FROM payment_updates
                 WHERE seq = ANY(ARRAY(SELECT old.seq FROM old, young WHERE old.seq < young.seq))
                 RETURNING seq
             ), mark AS (
                 UPDATE payment_updates_pruned SET upto = GREATEST(upto, (SELECT max(seq) FROM gone))
                 WHERE EXISTS (SELECT 1 FROM gone)
             )
             SELECT count(*) FROM gone",
        )
        .bind(retention.as_millis() as f64)
        .bind(PRUNE_BATCH)
        .fetch_one(pool)
        .await?;
        if deleted < PRUNE_BATCH {
            break;
        }
    }
    let oldest = sqlx::query(
        "SELECT seq, EXTRACT(EPOCH FROM now() - committed_at)::float8 AS age
         FROM payment_updates ORDER BY seq LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    oldest
        .map(|r| Ok((r.try_get("seq")?, r.try_get("age")?)))
        .transpose()
}
