//! `GET /console/payments/{id}`: one payment intent's story. Its record (status, the
//! details from Dojo's API: amounts, refunds, order reference) and its timeline, oldest
//! first: every delivery of every event (the first, from `dojo_events`, with its
//! outcome `applied`/`stale`/`ignored`; each later one, from `dojo_event_duplicates`,
//! as `duplicate`), the synthetic repairs of sweeps (channel `reconcile`), and the
//! snapshots of details from Dojo with what changed from the update before (from the
//! payment feed's updates, so within `FEED_RETENTION`).

use super::auth::Staff;
use super::view::{html, money, Frame, When};
use crate::Worker;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use askama::Template;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use std::sync::Arc;

pub struct Record {
    pub status: String,
    pub capture_mode: String,
    pub account_id: String,
    pub location: String,
    pub amount: String,
    pub tips: String,
    pub total: String,
    pub refunded: String,
    pub reference: String,
    pub order_id: String,
    pub waiter_id: String,
    pub card: String,
    pub dojo_status: String,
    pub dojo_updated: Option<When>,
    pub status_changed: When,
}

/// One line of the timeline.
pub struct Moment {
    pub at: When,
    /// `delivery`, `repair` or `snapshot`.
    pub kind: &'static str,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub channel: String,
    pub outcome: String,
    /// For a snapshot: what changed (`total: — → GBP 12.34`).
    pub changes: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/payment.html")]
struct PaymentPage {
    frame: Frame,
    id: String,
    record: Option<Record>,
    timeline: Vec<Moment>,
    deliveries: usize,
}

fn text(v: Option<String>) -> String {
    v.unwrap_or_default()
}

async fn record(worker: &Worker, id: &str) -> Result<Option<Record>, sqlx::Error> {
    let Some(r) = sqlx::query(
        "SELECT status, capture_mode, account_id, amount_value, amount_currency, tips_value,
                tips_currency, total_value, total_currency, refunded_amount, reference, order_id,
                waiter_id, card_summary, dojo_status, dojo_updated_at, status_changed_at
         FROM payment_intents WHERE payment_intent_id = $1",
    )
    .bind(id)
    .fetch_optional(&worker.pool)
    .await?
    else {
        return Ok(None);
    };
    let account_id: String = r.try_get("account_id")?;
    let currency: Option<String> = r.try_get("amount_currency")?;
    let location = worker
        .locations
        .current()
        .iter()
        .find(|l| l.owns_account(&account_id))
        .map_or_else(|| "default".to_owned(), |l| l.id.clone());
    Ok(Some(Record {
        status: r.try_get("status")?,
        capture_mode: text(r.try_get("capture_mode")?),
        location,
        amount: money(r.try_get("amount_value")?, currency.as_deref()),
        tips: money(
            r.try_get("tips_value")?,
            r.try_get::<Option<String>, _>("tips_currency")?.as_deref(),
        ),
        total: money(
            r.try_get("total_value")?,
            r.try_get::<Option<String>, _>("total_currency")?.as_deref(),
        ),
        refunded: money(r.try_get("refunded_amount")?, currency.as_deref()),
        reference: text(r.try_get("reference")?),
        order_id: text(r.try_get("order_id")?),
        waiter_id: text(r.try_get("waiter_id")?),
        card: text(r.try_get("card_summary")?),
        dojo_status: text(r.try_get("dojo_status")?),
        dojo_updated: r
            .try_get::<Option<DateTime<Utc>>, _>("dojo_updated_at")?
            .map(When::from),
        status_changed: r.try_get::<DateTime<Utc>, _>("status_changed_at")?.into(),
        account_id,
    }))
}

/// The fields of a feed update a snapshot may change, shown as text.
fn fields(r: &sqlx::postgres::PgRow) -> Result<Vec<(&'static str, String)>, sqlx::Error> {
    let currency: Option<String> = r.try_get("amount_currency")?;
    Ok(vec![
        ("status", text(r.try_get("status")?)),
        (
            "amount",
            money(r.try_get("amount_value")?, currency.as_deref()),
        ),
        (
            "total",
            money(
                r.try_get("total_value")?,
                r.try_get::<Option<String>, _>("total_currency")?.as_deref(),
            ),
        ),
        (
            "refunded",
            money(r.try_get("refunded_amount")?, currency.as_deref()),
        ),
        ("reference", text(r.try_get("reference")?)),
        ("order", text(r.try_get("order_id")?)),
    ])
}

async fn timeline(worker: &Worker, id: &str) -> Result<Vec<Moment>, sqlx::Error> {
    let mut moments = Vec::new();
    let events = sqlx::query(
        "SELECT event_id, event_type, COALESCE(payment_status, '') AS status, channel, outcome, received_at
         FROM dojo_events WHERE payment_intent_id = $1",
    )
    .bind(id)
    .fetch_all(&worker.pool)
    .await?;
    let mut types = std::collections::HashMap::new();
    for r in &events {
        let channel: String = r.try_get("channel")?;
        let event_id: String = r.try_get("event_id")?;
        types.insert(
            event_id.clone(),
            (
                r.try_get::<String, _>("event_type")?,
                r.try_get::<String, _>("status")?,
            ),
        );
        moments.push((
            r.try_get::<DateTime<Utc>, _>("received_at")?,
            Moment {
                at: r.try_get::<DateTime<Utc>, _>("received_at")?.into(),
                kind: if channel == "reconcile" {
                    "repair"
                } else {
                    "delivery"
                },
                event_id,
                event_type: r.try_get("event_type")?,
                status: r.try_get("status")?,
                channel,
                outcome: r.try_get("outcome")?,
                changes: Vec::new(),
            },
        ));
    }
    let duplicates = sqlx::query(
        "SELECT event_id, channel, received_at FROM dojo_event_duplicates WHERE payment_intent_id = $1",
    )
    .bind(id)
    .fetch_all(&worker.pool)
    .await?;
    for r in &duplicates {
        let event_id: String = r.try_get("event_id")?;
        let (event_type, status) = types.get(&event_id).cloned().unwrap_or_default();
        let at: DateTime<Utc> = r.try_get("received_at")?;
        moments.push((
            at,
            Moment {
                at: at.into(),
                kind: "delivery",
                event_id,
                event_type,
                status,
                channel: r.try_get("channel")?,
                outcome: "duplicate".into(),
                changes: Vec::new(),
            },
        ));
    }
    let updates = sqlx::query(
        "SELECT cause, status, amount_value, amount_currency, total_value, total_currency,
                refunded_amount, reference, order_id, committed_at
         FROM payment_updates WHERE payment_intent_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&worker.pool)
    .await?;
    let mut before: Option<Vec<(&'static str, String)>> = None;
    for r in &updates {
        let now = fields(r)?;
        let cause: String = r.try_get("cause")?;
        if cause.starts_with("snapshot:") {
            let changes = now
                .iter()
                .enumerate()
                .filter_map(|(i, (name, value))| {
                    let old = before.as_ref().map_or("—", |b| b[i].1.as_str());
                    let old = if old.is_empty() { "—" } else { old };
                    let new = if value.is_empty() {
                        "—"
                    } else {
                        value.as_str()
                    };
                    (old != new).then(|| format!("{name}: {old} → {new}"))
                })
                .collect();
            let at: DateTime<Utc> = r.try_get("committed_at")?;
            moments.push((
                at,
                Moment {
                    at: at.into(),
                    kind: "snapshot",
                    event_id: String::new(),
                    event_type: "details from Dojo's API".into(),
                    status: now[0].1.clone(),
                    channel: "api".into(),
                    outcome: "stored".into(),
                    changes,
                },
            ));
        }
        before = Some(now);
    }
    moments.sort_by_key(|a| a.0);
    Ok(moments.into_iter().map(|(_, m)| m).collect())
}

pub async fn page(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
    id: web::Path<String>,
) -> HttpResponse {
    let id = id.into_inner();
    if let Err(e) = super::events::check_text("A payment intent id", &id) {
        return super::view::message(StatusCode::BAD_REQUEST, &e);
    }
    let (record, timeline) = match tokio::try_join!(record(&worker, &id), timeline(&worker, &id)) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "console payment query failed");
            return super::view::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database did not answer; try again in a moment.",
            );
        }
    };
    let status = if record.is_none() && timeline.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let deliveries = timeline.iter().filter(|m| m.kind == "delivery").count();
    html(
        status,
        &PaymentPage {
            frame: Frame::new(&staff, "events"),
            id,
            record,
            timeline,
            deliveries,
        },
    )
}

/// Deletes duplicate deliveries older than `retention` (they follow the feed's
/// `FEED_RETENTION`); run with the feed's pruning.
pub async fn prune_duplicates(
    pool: &sqlx::PgPool,
    retention: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM dojo_event_duplicates WHERE received_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(retention.as_millis() as f64)
    .execute(pool)
    .await?
    .rows_affected())
}
