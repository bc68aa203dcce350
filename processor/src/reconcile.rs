//! Making the records agree with Dojo: a snapshot of a payment intent, from a details
//! fetch or a sweep, is stored (crate::snapshot).

use crate::Worker;
use common::dojo_api::PaymentIntent;

/// Stores `snapshot` (of an intent of `account`); `true` if it was newer than the
/// stored one. `source` says who fetched it (`enrichment`, `sweep`).
pub async fn absorb(
    worker: &Worker,
    account: &str,
    snapshot: &PaymentIntent,
    source: &str,
) -> Result<bool, sqlx::Error> {
    let _ = (account, source);
    let Some(id) = snapshot.id.as_deref() else {
        return Ok(false);
    };
    let mut tx = worker.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let stored = crate::snapshot::store(&mut tx, id, snapshot).await?;
    tx.commit().await?;
    Ok(stored)
}
