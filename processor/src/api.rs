//! The processor's HTTP surface: health, readiness, the payment-intent read API, and
//! `/openapi.json` (this service's description, generated from these handlers).

use crate::Worker;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use chrono::{DateTime, Utc};
use common::{EposError, ErrorType};
use serde::Serialize;
use sqlx::Row;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// Equality in constant time that hides the length too: compares SHA-256 digests.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(x.as_slice().ct_eq(y.as_slice()))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    // A query string that does not parse (a number out of range, ...) is a 400 with an
    // EPOSError like every other refusal, not actix's plain-text answer.
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        let message = format!("invalid query: {e}");
        actix_web::error::InternalError::from_response(
            e,
            error(
                actix_web::http::StatusCode::BAD_REQUEST,
                ErrorType::InvalidRequest,
                &message,
            ),
        )
        .into()
    }));
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/readyz/serving", web::get().to(readyz_serving))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi))
        .route("/v1/payment-intents/{id}", web::get().to(payment_intent))
        .route(
            "/v1/payment-updates",
            web::get().to(crate::feed::routes::updates),
        )
        .route(
            "/v1/payment-updates/stream",
            web::get().to(crate::feed::routes::stream),
        );
}

/// The longest id-like filter or search accepted (ids, references and orders are
/// shorter): the feed's filters and the console's.
pub(crate) const MAX_FILTER: usize = 255;

/// Whether `value` can be looked up as an id, reference or order: at most
/// [`MAX_FILTER`] bytes and no NUL (PostgreSQL text cannot hold one, and would answer
/// an error instead of "nothing").
pub(crate) fn valid_filter(value: &str) -> bool {
    value.len() <= MAX_FILTER && !value.contains('\0')
}

/// Any route or method the processor does not serve: 404 with an EPOSError and a fresh
/// `traceId`, like every other error of its API (not logged: scanners would fill the log).
pub async fn not_found() -> HttpResponse {
    let trace_id = common::telemetry::new_trace_id();
    json_line(
        HttpResponse::NotFound(),
        &EposError::new(ErrorType::NotFound, "no such route", &trace_id),
    )
}

/// A JSON answer ending with a newline.
pub(crate) fn json_line(mut builder: HttpResponseBuilder, value: &impl Serialize) -> HttpResponse {
    builder
        .content_type("application/json")
        .body(common::json_line(value))
}

/// `/healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// `/readyz`: ready while consuming with the database reachable.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    consuming: bool,
    database: bool,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Health))
)]
async fn healthz() -> HttpResponse {
    json_line(HttpResponse::Ok(), &Health { status: "ok" })
}

/// What the processor serves while it waits for PostgreSQL at start (however long that
/// takes): `/healthz` 200, so that a liveness probe does not restart a process that is
/// only waiting; `/readyz` and `/readyz/serving` 503 `{"consuming":false,"database":false}`;
/// anything else 503 EPOSError `UnexpectedError`. Stopped, and the listener handed to the
/// real server, once the database answers ([`crate::Application::build`]).
///
/// # Errors
/// When the listener cannot be served (as [`HttpServer::listen`]).
pub fn waiting(listener: std::net::TcpListener) -> std::io::Result<actix_web::dev::Server> {
    async fn starting() -> HttpResponse {
        let body = Readiness {
            consuming: false,
            database: false,
        };
        json_line(HttpResponse::ServiceUnavailable(), &body)
    }
    async fn unavailable() -> HttpResponse {
        error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::UnexpectedError,
            "the processor is starting: waiting for its database",
        )
    }
    Ok(actix_web::HttpServer::new(|| {
        actix_web::App::new()
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(starting))
            .route("/readyz/serving", web::get().to(starting))
            .default_service(web::to(unavailable))
    })
    .disable_signals()
    .workers(1)
    .listen(listener)?
    .run())
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This description (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
async fn openapi() -> HttpResponse {
    json_line(HttpResponse::Ok(), &ProcessorApi::openapi())
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format (docs/OPERATIONS.md lists the series)", body = String, content_type = "text/plain"))
)]
async fn metrics(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    worker
        .metrics
        .redis_up
        .set(i64::from(worker.dedupe.is_up()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&worker.metrics.registry))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Consuming, database reachable", body = Readiness),
        (status = 503, description = "Not consuming, or the database unreachable", body = Readiness),
    )
)]
async fn readyz(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    readiness(&worker, true).await
}

/// `{"consuming","database"}`, 200 when the database answers and, if `needs_consuming`,
/// the processor consumes; 503 otherwise.
async fn readiness(worker: &Worker, needs_consuming: bool) -> HttpResponse {
    let body = Readiness {
        consuming: worker.consuming.load(Ordering::SeqCst),
        database: crate::db::ping(&worker.pool).await,
    };
    if body.database && (body.consuming || !needs_consuming) {
        json_line(HttpResponse::Ok(), &body)
    } else {
        json_line(HttpResponse::ServiceUnavailable(), &body)
    }
}

#[utoipa::path(
    get,
    path = "/readyz/serving",
    tag = "operations",
    description = "Whether this replica can serve the read API, the payment feed and the console: its database answers, consuming or not. The readiness of the Service that routes those (deploy/kubernetes/processor.yaml), so that a broker outage does not take the tills' feed away; `/readyz` also needs consuming.",
    responses(
        (status = 200, description = "Database reachable", body = Readiness),
        (status = 503, description = "The database unreachable", body = Readiness),
    )
)]
async fn readyz_serving(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    readiness(&worker, false).await
}

pub(crate) fn error(
    status: actix_web::http::StatusCode,
    kind: ErrorType,
    message: &str,
) -> HttpResponse {
    let trace_id = common::telemetry::new_trace_id();
    tracing::warn!(
        trace_id,
        status = status.as_u16(),
        error = message,
        "read API request rejected"
    );
    json_line(
        HttpResponse::build(status),
        &EposError::new(kind, message, &trace_id),
    )
}

/// One `dojo_events` row of a payment intent.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    event_id: String,
    event_type: String,
    payment_status: Option<String>,
    capture_mode: Option<String>,
    /// Dojo's `createdAt`, exactly as Dojo wrote it (up to 9 fractional digits).
    #[schema(example = "2022-02-01T13:07:41.8667859Z")]
    created_at: String,
    received_at: DateTime<Utc>,
    /// `rest`, `webhook`, `ws`, or `reconcile` (a repair from Dojo's API).
    channel: String,
    /// `applied`, `stale` or `ignored`.
    outcome: String,
}

/// An amount in minor units with its currency (Dojo's Money).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    #[schema(example = 1500)]
    value: i64,
    #[schema(example = "GBP")]
    currency_code: String,
}

/// A payment record: its state from the events, its details from Dojo's API (`null`
/// until fetched), and its events, oldest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntentView {
    payment_intent_id: String,
    account_id: String,
    status: String,
    capture_mode: Option<String>,
    status_changed_at: DateTime<Utc>,
    last_event_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    amount: Option<Money>,
    tips_amount: Option<Money>,
    total_amount: Option<Money>,
    /// Minor units.
    refunded_amount: Option<i64>,
    reference: Option<String>,
    /// `orderDetails.externalId`.
    order_id: Option<String>,
    waiter_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    captures: Option<serde_json::Value>,
    /// Masked card number and type; never the full number.
    card_summary: Option<String>,
    dojo_updated_at: Option<DateTime<Utc>>,
    events: Vec<EventView>,
}

#[utoipa::path(
    get,
    path = "/v1/payment-intents/{id}",
    tag = "records",
    description = "A payment intent's record and its events (docs/CONTRACT.md).",
    params(("id" = String, Path, description = "Dojo's paymentIntentId")),
    responses(
        (status = 200, description = "The record", body = PaymentIntentView),
        (status = 401, description = "Missing or wrong bearer token", body = EposError),
        (status = 404, description = "Unknown payment intent, another location's (a location's feed token), or the read API is not configured", body = EposError),
        (status = 503, description = "The database is unavailable", body = EposError),
    ),
    security(("bearer" = []))
)]
async fn payment_intent(
    req: HttpRequest,
    id: web::Path<String>,
    worker: web::Data<Arc<Worker>>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let scope = match crate::feed::routes::authorize(&req, &worker) {
        Ok(scope) => scope,
        Err(refusal) => return refusal.answer(),
    };
    if !valid_filter(&id) {
        // No payment intent has such an id (PostgreSQL text cannot even hold a NUL).
        return error(
            StatusCode::NOT_FOUND,
            ErrorType::NotFound,
            "unknown payment intent",
        );
    }
    match load(&worker.pool, &id).await {
        // Another location's record is answered as unknown: never its data.
        Ok(Some(body)) if scope.sees_account(&worker, &body.account_id) => {
            json_line(HttpResponse::Ok(), &body)
        }
        Ok(_) => error(
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

async fn load(pool: &sqlx::PgPool, id: &str) -> Result<Option<PaymentIntentView>, sqlx::Error> {
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
        "SELECT event_id, event_type, payment_status, capture_mode, received_at, channel, outcome,
                COALESCE(payload->>'createdAt',
                         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) AS created_at_sent
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
            created_at: r.try_get("created_at_sent")?,
            received_at: r.try_get("received_at")?,
            channel: r.try_get("channel")?,
            outcome: r.try_get("outcome")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(PaymentIntentView {
        payment_intent_id: row.try_get("payment_intent_id")?,
        account_id: row.try_get("account_id")?,
        status: row.try_get("status")?,
        capture_mode: row.try_get("capture_mode")?,
        status_changed_at: row.try_get("status_changed_at")?,
        last_event_id: row.try_get("last_event_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        amount: money(&row, "amount")?,
        tips_amount: money(&row, "tips")?,
        total_amount: money(&row, "total")?,
        refunded_amount: row.try_get("refunded_amount")?,
        reference: row.try_get("reference")?,
        order_id: row.try_get("order_id")?,
        waiter_id: row.try_get("waiter_id")?,
        captures: row.try_get("captures")?,
        card_summary: row.try_get("card_summary")?,
        dojo_updated_at: row.try_get("dojo_updated_at")?,
        events,
    }))
}

/// Money (`{"value": minor units, "currencyCode"}`) from `{prefix}_value` and
/// `{prefix}_currency`; `null` until known.
fn money(row: &sqlx::postgres::PgRow, prefix: &str) -> Result<Option<Money>, sqlx::Error> {
    let value: Option<i64> = row.try_get(format!("{prefix}_value").as_str())?;
    let currency: Option<String> = row.try_get(format!("{prefix}_currency").as_str())?;
    Ok(value.zip(currency).map(|(value, currency_code)| Money {
        value,
        currency_code,
    }))
}

/// The OpenAPI 3.1 description of the processor's HTTP routes (utoipa), served at
/// `/openapi.json` and committed as `docs/openapi/processor.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dojo Events receiver: processor",
        description = "Health, metrics and the payment records' read API of the processor. The operating contract: docs/CONTRACT.md."
    ),
    paths(healthz, readyz, readyz_serving, metrics, openapi, payment_intent, crate::feed::routes::updates, crate::feed::routes::stream),
    components(schemas(PaymentIntentView, EventView, Money, EposError, Health, Readiness, crate::feed::store::PaymentUpdate, crate::feed::store::FeedMoney, crate::feed::routes::UpdatesPage)),
    modifiers(&Bearer),
    tags(
        (name = "records", description = "The POS payment records"),
        (name = "feed", description = "The payment feed: changes of the records, in order (docs/FEED.md)"),
        (name = "operations", description = "Health, readiness, metrics, this description"),
    )
)]
pub struct ProcessorApi;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        api.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("PROCESSOR_API_TOKEN (every location) or a location's feed token (that location only)"))
                        .build(),
                ),
            );
    }
}
