//! HTTP routes. Each event route authenticates in its own way, then hands the body to
//! [`crate::accept`]; the helpers here are what both event routes share.
//!
//! Every event route exists twice: under `/locations/{id}` (the location comes from the
//! path, and only its credentials are accepted) and at the root of round 1 (the location
//! comes from the credentials: the REST username, or whichever location's webhook
//! secret signed the body). Never from the unauthenticated body (dojo-api.md §4a).

pub mod events;
pub mod health;
pub mod webhook;

use crate::accept::AcceptError;
use crate::error::{ApiError, JsonLine};
use crate::metrics::{NO_LOCATION, UNKNOWN_LOCATION};
use crate::State;
use actix_web::{web, HttpRequest, HttpResponse};
use common::locations::Location;
use common::telemetry::Ids;
use common::{Channel, RequestorHeaders};
use futures::StreamExt;
use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Largest accepted body (CONTRACT.md): 64 KiB.
pub const MAX_BODY: usize = crate::accept::MAX_EVENT;

/// Which location a delivery turned out to be for, once its route knows: the `location`
/// of its log lines and metrics.
#[derive(Default)]
pub struct Tenant(RefCell<Option<String>>);

impl Tenant {
    /// Ties the delivery to `location` (a configured location's id).
    pub fn set(&self, location: &Location) {
        tracing::Span::current().record("location", location.id.as_str());
        *self.0.borrow_mut() = Some(location.id.clone());
    }

    /// A path naming no configured location.
    pub fn unknown(&self) {
        *self.0.borrow_mut() = Some(UNKNOWN_LOCATION.to_owned());
    }

    fn label(&self) -> String {
        self.0
            .borrow()
            .clone()
            .unwrap_or_else(|| NO_LOCATION.into())
    }
}

/// The location named by a route's path; an unknown id is 404.
pub fn path_location(state: &State, id: &str, tenant: &Tenant) -> Result<Arc<Location>, ApiError> {
    match state.locations.current().get(id) {
        Some(location) => {
            tenant.set(location);
            Ok(location.clone())
        }
        None => {
            tenant.unknown();
            Err(ApiError::UnknownLocation)
        }
    }
}
/// Longest a client may take to send its body: a stalled upload cannot hold a slot.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one delivery in its span (continuing Dojo's `traceparent` if it sent one),
/// answers it, logs a rejection under the span's trace id, and counts it.
pub async fn deliver<'a, F, Fut>(
    tenant: &'a Tenant,
    req: &HttpRequest,
    state: &State,
    channel: Channel,
    name: &'static str,
    inner: F,
) -> HttpResponse
where
    F: FnOnce(Ids, &'a Tenant) -> Fut,
    Fut: Future<Output = Result<HttpResponse, ApiError>>,
{
    let started = Instant::now();
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let (span, ids) = crate::accept::delivery_span(name, channel.as_str(), incoming);
    let result = inner(ids.clone(), tenant).instrument(span.clone()).await;
    let _inside = span.enter();
    let (response, answer) = match result {
        Ok(response) => (response, "accepted"),
        Err(e) => (e.respond(&ids.trace_id), e.label()),
    };
    span.record("dojo.answer", answer);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    state
        .intake
        .metrics
        .answered(channel.as_str(), answer, &tenant.label(), started);
    response
}

/// A missing content type is accepted; anything else must be JSON (`application/json`
/// or a `+json` type), parameters such as `charset` allowed.
pub fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get("content-type") else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            text.chars().take(100).collect(),
        ))
    }
}

/// Reads the body, refusing it as soon as it is known to exceed [`MAX_BODY`]: from the
/// `Content-Length` header before reading anything, or while streaming.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024));
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::Invalid(format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ApiError::TooLarge(MAX_BODY));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_DEADLINE, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout(BODY_DEADLINE)))
}

/// Validates, publishes, and answers `200 {}` once the broker confirmed.
pub async fn accept_and_answer(
    state: &State,
    channel: Channel,
    headers: RequestorHeaders,
    body: &[u8],
    ids: &Ids,
    location: &Location,
) -> Result<HttpResponse, ApiError> {
    match state
        .intake
        .accept(channel, headers, body, ids, location)
        .await
    {
        Ok(_) => Ok(HttpResponse::Ok().json_line(serde_json::json!({}))),
        Err(AcceptError::TooLarge) => Err(ApiError::TooLarge(MAX_BODY)),
        Err(AcceptError::Invalid(e)) => Err(ApiError::Invalid(e.0)),
        Err(AcceptError::WrongAccount { .. }) => Err(ApiError::WrongAccount),
        Err(AcceptError::NotQueued(e)) => Err(ApiError::Unavailable(e)),
    }
}

/// Unknown routes get an EPOSError too.
pub async fn not_found() -> HttpResponse {
    ApiError::NotConfigured.respond(&common::telemetry::new_trace_id())
}

/// An event route asked with another method than POST: 405 with `Allow: POST`
/// (RFC 9110 §15.5.6).
pub async fn method_not_allowed() -> HttpResponse {
    ApiError::MethodNotAllowed.respond(&common::telemetry::new_trace_id())
}
