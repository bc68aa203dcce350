//! Making the records agree with Dojo. A snapshot of a payment intent (from a details
//! fetch, crate::enrich, or a sweep, crate::sweep) is stored (crate::snapshot); if it
//! shows a status that no applied event explains (a later lifecycle stage, `updatedAt`
//! later than the record's last change, or no record at all), the difference goes
//! through the same state rule and exactly-once path as a delivery: a synthetic event
//! on channel `reconcile`, id `reconcile:{pi}:{status}:{updatedAt}` (so a repair is
//! recorded once however many fetches or sweeps find it), `createdAt` = `updatedAt`.
//! A repair only ever moves a status forward, and waits `REPAIR_GRACE` after Dojo's
//! change (the event itself is most likely still on its way).

use crate::apply::{apply, Incoming};
use crate::rule::Outcome;
use crate::Worker;
use chrono::{DateTime, SecondsFormat, Utc};
use common::dojo_api::PaymentIntent;
use common::{Channel, DojoEvent, PaymentStatus};
use sqlx::Row;

/// What a snapshot did to the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Absorbed {
    /// The snapshot was newer than the stored details and was written.
    pub stored: bool,
    /// A synthetic event was applied (`unknown_intent` or `status_behind`).
    pub repaired: Option<&'static str>,
    /// A repair is due but the change is younger than `REPAIR_GRACE`: look again later.
    pub deferred: bool,
}

/// The record as far as repairs care.
struct Record {
    stage: i16,
    changed_at: DateTime<Utc>,
}

/// Why `snapshot` needs a repair of `record`, if it does.
fn needs_repair(record: Option<&Record>, snapshot: &PaymentIntent) -> Option<&'static str> {
    let stage = PaymentStatus::from(snapshot.status.as_deref()?).stage()?;
    let updated = snapshot.updated_at?;
    match record {
        None => Some("unknown_intent"),
        Some(r) if stage > r.stage && updated > r.changed_at => Some("status_behind"),
        Some(_) => None,
    }
}

/// The synthetic event of a repair, as Dojo would have sent it, plus why.
pub fn synthetic_event(
    account: &str,
    snapshot: &PaymentIntent,
    reason: &str,
    source: &str,
) -> Option<String> {
    let pi = snapshot.id.as_deref()?;
    let status = snapshot.status.as_deref()?;
    let at = snapshot
        .updated_at?
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    let kind = if status == "Created" {
        "payment_intent.created"
    } else {
        "payment_intent.status_updated"
    };
    Some(
        serde_json::json!({
            "id": format!("reconcile:{pi}:{status}:{at}"),
            "event": kind,
            "accountId": account,
            "createdAt": at,
            "data": {"paymentIntentId": pi, "paymentStatus": status, "captureMode": snapshot.capture_mode},
            "reconcile": {"reason": reason, "source": source},
        })
        .to_string(),
    )
}

async fn record(pool: &sqlx::PgPool, pi: &str) -> Result<Option<Record>, sqlx::Error> {
    sqlx::query(
        "SELECT status_stage, status_changed_at FROM payment_intents WHERE payment_intent_id = $1",
    )
    .bind(pi)
    .fetch_optional(pool)
    .await?
    .map(|r| {
        Ok(Record {
            stage: r.try_get(0)?,
            changed_at: r.try_get(1)?,
        })
    })
    .transpose()
}

/// Repairs the record of `snapshot` (an intent of `account`) if needed, then stores the
/// snapshot. `source`: who fetched it (`enrichment`, `sweep`, `overdue`), a metric label.
pub async fn absorb(
    worker: &Worker,
    account: &str,
    snapshot: &PaymentIntent,
    source: &'static str,
) -> Result<Absorbed, sqlx::Error> {
    let (absorbed, tx) = absorb_open(worker, account, snapshot, source).await?;
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(absorbed)
}

/// [`absorb`], but returns the snapshot's transaction still open (the snapshot stored,
/// the intent's advisory lock held) for the caller to add its own bookkeeping to and
/// commit: enrichment deletes its outbox row in it, so a fetch costs one commit, not two.
/// `None` when the snapshot has no id (nothing stored).
pub async fn absorb_open(
    worker: &Worker,
    account: &str,
    snapshot: &PaymentIntent,
    source: &'static str,
) -> Result<(Absorbed, Option<sqlx::Transaction<'static, sqlx::Postgres>>), sqlx::Error> {
    let Some(id) = snapshot.id.as_deref() else {
        return Ok((Absorbed::default(), None));
    };
    let mut absorbed = Absorbed::default();
    let current = record(&worker.pool, id).await?;
    let grace = chrono::Duration::from_std(worker.settings.sweep.repair_grace).unwrap_or_default();
    let reason = needs_repair(current.as_ref(), snapshot);
    let recent = snapshot.updated_at.is_some_and(|u| u > Utc::now() - grace);
    absorbed.deferred = reason.is_some() && recent;
    if let Some(reason) = reason.filter(|_| !recent) {
        let body =
            synthetic_event(account, snapshot, reason, source).expect("id, status, updatedAt");
        let event = DojoEvent::from_json(body.as_bytes()).expect("a synthetic event parses");
        let incoming = Incoming {
            event: &event,
            channel: Channel::Reconcile,
            received_at: Utc::now(),
            payload: &body,
        };
        // The state rule decides: a later delivery applied meanwhile makes this stale.
        let outcome = apply(&worker.pool, &[incoming], None, None).await?;
        if outcome.first() == Some(&Outcome::Applied) {
            absorbed.repaired = Some(reason);
            worker
                .metrics
                .repairs
                .with_label_values(&[source, reason])
                .inc();
            tracing::info!(payment_intent_id = id, status = snapshot.status.as_deref(), reason, source,
                event_id = %event.id, "repaired from Dojo's API: a status no delivered event explained");
        }
    }
    let mut tx = worker.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    absorbed.stored = crate::snapshot::store(&mut tx, id, snapshot).await?;
    Ok((absorbed, Some(tx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(status: &str, updated: &str) -> PaymentIntent {
        PaymentIntent {
            id: Some("pi_1".into()),
            status: Some(status.into()),
            updated_at: Some(updated.parse().unwrap()),
            ..PaymentIntent::default()
        }
    }

    #[test]
    fn only_a_later_stage_at_a_later_time_is_repaired() {
        let rec = Record {
            stage: 3,
            changed_at: "2026-01-01T00:00:05Z".parse().unwrap(),
        };
        let at = "2026-01-01T00:00:09Z";
        assert_eq!(
            needs_repair(Some(&rec), &snapshot("Refunded", at)),
            Some("status_behind")
        );
        assert_eq!(
            needs_repair(Some(&rec), &snapshot("Authorized", at)),
            None,
            "never backwards"
        );
        assert_eq!(needs_repair(Some(&rec), &snapshot("Captured", at)), None);
        let early = "2026-01-01T00:00:05Z";
        assert_eq!(needs_repair(Some(&rec), &snapshot("Refunded", early)), None);
        assert_eq!(
            needs_repair(None, &snapshot("Captured", at)),
            Some("unknown_intent")
        );
        assert_eq!(needs_repair(None, &snapshot("PartiallyRefunded", at)), None);
    }

    #[test]
    fn the_synthetic_event_is_deterministic_and_valid() {
        let s = snapshot("Refunded", "2026-01-01T00:00:09.1234567Z");
        let a = synthetic_event("acc", &s, "status_behind", "sweep").unwrap();
        let b = synthetic_event("acc", &s, "status_behind", "enrichment").unwrap();
        let (ea, eb) = (
            DojoEvent::from_json(a.as_bytes()).unwrap(),
            DojoEvent::from_json(b.as_bytes()).unwrap(),
        );
        assert_eq!(ea.id, "reconcile:pi_1:Refunded:2026-01-01T00:00:09.123456Z");
        assert_eq!(ea.id, eb.id, "found twice, recorded once");
    }
}
