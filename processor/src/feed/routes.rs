//! `GET /v1/payment-updates` (a page from a cursor) and `GET /v1/payment-updates/stream`
//! (Server-Sent Events), and who may read what: `PROCESSOR_API_TOKEN` sees every
//! location, a location's `feed_tokens` only that location.

use super::store::{self, Filter, Page, PaymentUpdate};
use crate::api::{constant_time_eq, error, json_line, valid_filter, MAX_FILTER};
use crate::Worker;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use common::{EposError, ErrorType};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

/// What a bearer token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `PROCESSOR_API_TOKEN`: every location (back office).
    All,
    /// A location's feed token: that location only.
    Location(String),
}

impl Scope {
    /// Whether a record of `account_id` is visible.
    pub fn sees_account(&self, worker: &Worker, account_id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Location(id) => worker
                .locations
                .current()
                .get(id)
                .is_some_and(|l| l.owns_account(account_id)),
        }
    }
}

/// Why a feed or read-API request is refused: one mapping to status and EPOSError.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("read API not configured")]
    NotConfigured,
    #[error("invalid bearer token")]
    Unauthorized,
    #[error("this token reads its own location only")]
    OtherLocation,
    #[error(
        "cursor older than the feed's retention (updates up to seq {0} were pruned): \
         resync from GET /v1/payment-intents/{{id}}, then follow the feed without `after`"
    )]
    Gone(i64),
    #[error(
        "cursor ahead of the feed (its newest update is seq {0}): the cursor comes from \
         another database (restored or replaced); resync from GET /v1/payment-intents/{{id}}, \
         then follow the feed without `after`"
    )]
    Ahead(i64),
    #[error("database unavailable")]
    Unavailable,
    /// A filter no record can have (found by Schemathesis: NUL reached the database).
    #[error("{0}")]
    Invalid(String),
}

impl Refusal {
    pub fn answer(&self) -> HttpResponse {
        let (status, kind) = match self {
            Refusal::NotConfigured => (StatusCode::NOT_FOUND, ErrorType::NotFound),
            Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorType::InvalidRequest),
            Refusal::OtherLocation => (StatusCode::FORBIDDEN, ErrorType::InvalidRequest),
            Refusal::Gone(_) | Refusal::Ahead(_) => (StatusCode::GONE, ErrorType::NotFound),
            Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ErrorType::UnexpectedError),
            Refusal::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorType::InvalidRequest),
        };
        error(status, kind, &self.to_string())
    }
}

fn unavailable(e: &sqlx::Error) -> Refusal {
    tracing::error!(error = %e, "payment feed query failed");
    Refusal::Unavailable
}

/// The scope of the request's bearer token; a refusal when there is none.
/// Every configured token is compared (in constant time), whichever matches.
pub fn authorize(req: &HttpRequest, worker: &Worker) -> Result<Scope, Refusal> {
    let locations = worker.locations.current();
    let any_feed_token = locations.iter().any(|l| !l.feed_tokens.is_empty());
    if worker.settings.api_token.is_none() && !any_feed_token {
        return Err(Refusal::NotConfigured);
    }
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .unwrap_or("")
        .trim();
    let mut scope = None;
    if let Some(token) = &worker.settings.api_token {
        if constant_time_eq(presented, token.expose()) {
            scope = Some(Scope::All);
        }
    }
    for location in locations.iter() {
        for token in &location.feed_tokens {
            if constant_time_eq(presented, token.expose()) && scope.is_none() {
                scope = Some(Scope::Location(location.id.clone()));
            }
        }
    }
    scope.ok_or(Refusal::Unauthorized)
}

/// Filters and cursor of both feed routes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Return updates with a `seq` above this (the last one seen); omitted: from the
    /// oldest kept. On the stream, `Last-Event-ID` wins over it.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Most updates in one page: 1 or more (default 100; more than 1000 return 1000).
    /// Cursor API only.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// Only this location's updates (a location token: its own location only).
    location: Option<String>,
    /// Only this payment intent's updates.
    payment_intent_id: Option<String>,
    /// Only updates of this order (`orderDetails.externalId`).
    order_id: Option<String>,
}

/// A page of updates from a cursor.
#[derive(Serialize, ToSchema)]
pub struct UpdatesPage {
    /// In `seq` order.
    updates: Vec<PaymentUpdate>,
    /// The cursor for the next page: the last `seq` returned, else `after`.
    #[schema(example = 42)]
    next: i64,
}

/// The filter a scope and a query allow; 403 for another location's, 400 for a filter
/// that is no id (over 255 bytes, or a NUL, which PostgreSQL text cannot hold), a
/// negative `after` or a `limit` below 1.
fn filter(scope: &Scope, q: &FeedQuery) -> Result<Filter, Refusal> {
    for (name, value) in [
        ("location", &q.location),
        ("paymentIntentId", &q.payment_intent_id),
        ("orderId", &q.order_id),
    ] {
        if value.as_deref().is_some_and(|v| !valid_filter(v)) {
            return Err(Refusal::Invalid(format!(
                "`{name}` must be at most {MAX_FILTER} bytes, without NUL"
            )));
        }
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(Refusal::Invalid(
            "`after` must be a `seq`: 0 or more".into(),
        ));
    }
    if q.limit.is_some_and(|l| l < 1) {
        return Err(Refusal::Invalid(
            "`limit` must be 1 or more (at most 1000 are returned)".into(),
        ));
    }
    let location = match (scope, &q.location) {
        (Scope::All, l) => l.clone(),
        (Scope::Location(own), Some(asked)) if asked != own => return Err(Refusal::OtherLocation),
        (Scope::Location(own), _) => Some(own.clone()),
    };
    Ok(Filter {
        location,
        payment_intent_id: q.payment_intent_id.clone(),
        order_id: q.order_id.clone(),
    })
}

#[utoipa::path(
    get,
    path = "/v1/payment-updates",
    tag = "feed",
    description = "Changes of payment records after a cursor, in `seq` order (docs/FEED.md).",
    params(FeedQuery),
    responses(
        (status = 200, description = "A page of updates", body = UpdatesPage),
        (status = 400, description = "A malformed query parameter", body = EposError),
        (status = 401, description = "Missing or wrong bearer token", body = EposError),
        (status = 403, description = "Another location than the token's", body = EposError),
        (status = 404, description = "The read API is not configured", body = EposError),
        (status = 410, description = "The cursor is older than the retention, or ahead of the newest update (from another database): resync from the records", body = EposError),
        (status = 503, description = "The database is unavailable", body = EposError),
    ),
    security(("bearer" = []))
)]
pub async fn updates(
    req: HttpRequest,
    q: web::Query<FeedQuery>,
    worker: web::Data<Arc<Worker>>,
) -> HttpResponse {
    let filter = match authorize(&req, &worker).and_then(|s| filter(&s, &q)) {
        Ok(f) => f,
        Err(refusal) => return refusal.answer(),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match store::page(&worker.pool, &filter, q.after, limit).await {
        Ok(Page::Updates(updates)) => {
            let next = updates.last().map_or(q.after.unwrap_or(0), |u| u.seq);
            json_line(HttpResponse::Ok(), &UpdatesPage { updates, next })
        }
        Ok(Page::Gone { pruned_upto }) => Refusal::Gone(pruned_upto).answer(),
        Ok(Page::Ahead { head }) => Refusal::Ahead(head).answer(),
        Err(e) => unavailable(&e).answer(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/payment-updates/stream",
    tag = "feed",
    description = "The same updates as Server-Sent Events: `event: payment_update`, `id:` the `seq`, `data:` the update as JSON; `retry:` once; comment lines as heartbeats. Resume with `Last-Event-ID` (or `after`). A client too slow to read is cut off after a comment `: slow consumer, resume with Last-Event-ID` (docs/FEED.md).",
    params(
        FeedQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "The last `seq` received: resume after it"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed query parameter", body = EposError),
        (status = 401, description = "Missing or wrong bearer token", body = EposError),
        (status = 403, description = "Another location than the token's", body = EposError),
        (status = 404, description = "The read API is not configured", body = EposError),
        (status = 410, description = "The cursor is older than the retention, or ahead of the newest update (from another database): resync from the records", body = EposError),
        (status = 503, description = "The database is unavailable", body = EposError),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    req: HttpRequest,
    q: web::Query<FeedQuery>,
    worker: web::Data<Arc<Worker>>,
) -> HttpResponse {
    let filter = match authorize(&req, &worker).and_then(|s| filter(&s, &q)) {
        Ok(f) => f,
        Err(refusal) => return refusal.answer(),
    };
    open_stream(&req, worker.get_ref(), filter, q.after, None).await
}

/// The stream of `filter`'s updates, resuming after `Last-Event-ID` (else `after`; else
/// `start`: `None` for the oldest kept, `Some(head)` for only what comes next).
pub async fn open_stream(
    req: &HttpRequest,
    worker: &Arc<Worker>,
    filter: Filter,
    after: Option<i64>,
    start: Option<i64>,
) -> HttpResponse {
    // A `Last-Event-ID` that is no seq is refused, not ignored: resuming from somewhere
    // else than the client thinks would repeat or skip updates.
    let last_event_id = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()) {
            Some(seq) if seq >= 0 => Some(seq),
            _ => {
                return Refusal::Invalid(
                    "`Last-Event-ID` must be a `seq` (an integer, 0 or more)".into(),
                )
                .answer()
            }
        },
    };
    // Without a cursor: from the oldest kept, i.e. after what was pruned.
    let after = match last_event_id.or(after).or(start) {
        Some(after) => after,
        None => match store::pruned_upto(&worker.pool).await {
            Ok(upto) => upto,
            Err(e) => return unavailable(&e).answer(),
        },
    };
    // Subscribed to the shared tail before the first page is read: nothing committed
    // in between is missed (and what both show is sent once, by position).
    let batches = worker.feed.batches();
    // The first page answers the errors (410, 503) before the stream starts.
    let first = match store::page(&worker.pool, &filter, Some(after), super::sse::PAGE).await {
        Ok(Page::Updates(u)) => u,
        Ok(Page::Gone { pruned_upto }) => return Refusal::Gone(pruned_upto).answer(),
        Ok(Page::Ahead { head }) => return Refusal::Ahead(head).answer(),
        Err(e) => return unavailable(&e).answer(),
    };
    let worker = worker.clone();
    let (tx, rx) = mpsc::channel(worker.settings.feed.client_buffer);
    tokio::spawn(super::sse::serve(worker, filter, after, first, tx, batches));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        // nginx: do not buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}
