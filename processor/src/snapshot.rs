//! Storing a payment intent as Dojo's API served it (crate::enrich, crate::reconcile):
//! the amounts in minor units with their currency, the refunded amount, the order link
//! (`reference`, `orderDetails.externalId`, `metadata.waiterId`), the captures, the card
//! summary (type and last four digits only) and auth code, Dojo's `createdAt` and
//! `updatedAt`. An older snapshot (by `updatedAt`) never overwrites a newer one.

use common::dojo_api::{Money, PaymentIntent};

fn split(m: &Option<Money>) -> (Option<i64>, Option<&str>) {
    m.as_ref().map_or((None, None), |m| {
        (Some(m.value), Some(m.currency_code.as_str()))
    })
}

/// Writes `snapshot` onto the record of `payment_intent_id` if it is newer than the one
/// stored (`updatedAt`); `false`: not written (not newer, or no record).
pub async fn store(
    conn: &mut sqlx::PgConnection,
    payment_intent_id: &str,
    snapshot: &PaymentIntent,
) -> Result<bool, sqlx::Error> {
    let (amount, amount_currency) = split(&snapshot.amount);
    let (tips, tips_currency) = split(&snapshot.tips_amount);
    let (total, total_currency) = split(&snapshot.total_amount);
    let details = snapshot.payment_details.as_ref();
    let captures = (!snapshot.captures.is_empty())
        .then(|| serde_json::to_value(&snapshot.captures).expect("captures serialise"));
    let written = sqlx::query(
        "UPDATE payment_intents SET
             amount_value = $2, amount_currency = $3, tips_value = $4, tips_currency = $5,
             total_value = $6, total_currency = $7, refunded_amount = $8, reference = $9,
             order_id = $10, waiter_id = $11, captures = $12, card_summary = $13,
             auth_code = $14, dojo_status = $15, dojo_created_at = $16, dojo_updated_at = $17,
             details_fetched_at = now(), updated_at = now()
         WHERE payment_intent_id = $1
           AND (dojo_updated_at IS NULL OR dojo_updated_at < $17)",
    )
    .bind(payment_intent_id)
    .bind(amount)
    .bind(amount_currency)
    .bind(tips)
    .bind(tips_currency)
    .bind(total)
    .bind(total_currency)
    .bind(snapshot.refunded_amount)
    .bind(snapshot.reference.as_deref())
    .bind(snapshot.order_id())
    .bind(snapshot.waiter_id())
    .bind(captures)
    .bind(
        details
            .and_then(|d| d.card.as_ref())
            .and_then(|c| c.summary()),
    )
    .bind(details.and_then(|d| d.auth_code.as_deref()))
    .bind(snapshot.status.as_deref())
    .bind(snapshot.created_at)
    .bind(snapshot.updated_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}
