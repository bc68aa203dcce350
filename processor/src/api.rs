//! The processor's HTTP surface: health, readiness, and the payment-intent read API.

use crate::Worker;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use common::{EposError, ErrorType};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Equality in constant time that hides the length too: compares SHA-256 digests.
fn constant_time_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(x.as_slice().ct_eq(y.as_slice()))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/v1/payment-intents/{id}", web::get().to(payment_intent));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn metrics(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    worker
        .metrics
        .redis_up
        .set(i64::from(worker.dedupe.is_up()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&worker.metrics.registry))
}

async fn readyz(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    let consuming = worker.consuming.load(Ordering::SeqCst);
    let database = crate::db::ping(&worker.pool).await;
    let body = json!({"consuming": consuming, "database": database});
    if consuming && database {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

fn error(status: actix_web::http::StatusCode, kind: ErrorType, message: &str) -> HttpResponse {
    let trace_id = common::telemetry::new_trace_id();
    tracing::warn!(
        trace_id,
        status = status.as_u16(),
        message,
        "read API request rejected"
    );
    HttpResponse::build(status).json(EposError::new(kind, message, &trace_id))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventView {
    event_id: String,
    event_type: String,
    payment_status: Option<String>,
    capture_mode: Option<String>,
    created_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    channel: String,
    outcome: String,
}

async fn payment_intent(
    req: HttpRequest,
    id: web::Path<String>,
    worker: web::Data<Arc<Worker>>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(token) = worker.settings.api_token.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            ErrorType::NotFound,
            "read API not configured",
        );
    };
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.trim(), token.expose()) {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorType::InvalidRequest,
            "invalid bearer token",
        );
    }
    match load(&worker.pool, &id).await {
        Ok(Some(body)) => HttpResponse::Ok().json(body),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            ErrorType::NotFound,
            "unknown payment intent",
        ),
        Err(e) => {
            tracing::error!(error = %e, "read API query failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::UnexpectedError,
                "database unavailable",
            )
        }
    }
}

async fn load(pool: &sqlx::PgPool, id: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT payment_intent_id, account_id, status, capture_mode, status_changed_at,
                last_event_id, created_at, updated_at, amount_value, amount_currency,
                tips_value, tips_currency, total_value, total_currency, refunded_amount,
                reference, order_id, waiter_id, captures, card_summary, dojo_updated_at
         FROM payment_intents WHERE payment_intent_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let events = sqlx::query(
        "SELECT event_id, event_type, payment_status, capture_mode, created_at, received_at, channel, outcome
         FROM dojo_events WHERE payment_intent_id = $1 ORDER BY created_at, event_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(EventView {
            event_id: r.try_get("event_id")?,
            event_type: r.try_get("event_type")?,
            payment_status: r.try_get("payment_status")?,
            capture_mode: r.try_get("capture_mode")?,
            created_at: r.try_get("created_at")?,
            received_at: r.try_get("received_at")?,
            channel: r.try_get("channel")?,
            outcome: r.try_get("outcome")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(json!({
        "paymentIntentId": row.try_get::<String, _>("payment_intent_id")?,
        "accountId": row.try_get::<String, _>("account_id")?,
        "status": row.try_get::<String, _>("status")?,
        "captureMode": row.try_get::<Option<String>, _>("capture_mode")?,
        "statusChangedAt": row.try_get::<DateTime<Utc>, _>("status_changed_at")?,
        "lastEventId": row.try_get::<String, _>("last_event_id")?,
        "createdAt": row.try_get::<DateTime<Utc>, _>("created_at")?,
        "updatedAt": row.try_get::<DateTime<Utc>, _>("updated_at")?,
        "amount": money(&row, "amount")?,
        "tipsAmount": money(&row, "tips")?,
        "totalAmount": money(&row, "total")?,
        "refundedAmount": row.try_get::<Option<i64>, _>("refunded_amount")?,
        "reference": row.try_get::<Option<String>, _>("reference")?,
        "orderId": row.try_get::<Option<String>, _>("order_id")?,
        "waiterId": row.try_get::<Option<String>, _>("waiter_id")?,
        "captures": row.try_get::<Option<serde_json::Value>, _>("captures")?,
        "cardSummary": row.try_get::<Option<String>, _>("card_summary")?,
        "dojoUpdatedAt": row.try_get::<Option<DateTime<Utc>>, _>("dojo_updated_at")?,
        "events": events,
    })))
}

/// Money (`{"value": minor units, "currencyCode"}`) from `{prefix}_value` and
/// `{prefix}_currency`; `null` until known.
fn money(row: &sqlx::postgres::PgRow, prefix: &str) -> Result<serde_json::Value, sqlx::Error> {
    let value: Option<i64> = row.try_get(format!("{prefix}_value").as_str())?;
    let currency: Option<String> = row.try_get(format!("{prefix}_currency").as_str())?;
    Ok(match (value, currency) {
        (Some(value), Some(code)) => json!({"value": value, "currencyCode": code}),
        _ => serde_json::Value::Null,
    })
}
