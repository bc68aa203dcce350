//! `POST /v1/webhooks/dojo` and `POST /locations/{id}/v1/webhooks/dojo`: Dojo webhooks,
//! verified by `dojo-signature` over the raw body before anything is parsed. Under
//! `/locations/{id}` only that location's secrets are tried; on the root route, every
//! location's, and the one whose secret signed the body is the delivery's location.

use super::{accept_and_answer, check_content_type, deliver, path_location, read_body, Tenant};
use crate::error::ApiError;
use crate::openapi::DeliveryAnswers;
use crate::State;
use actix_web::{web, HttpRequest, HttpResponse};
use common::locations::Location;
use common::telemetry::Ids;
use common::DojoEvent;
use common::{signature, Channel, RequestorHeaders};
use std::sync::Arc;

fn signature_header(req: &HttpRequest) -> Result<String, ApiError> {
    Ok(req
        .headers()
        .get("dojo-signature")
        .ok_or(ApiError::BadSignature("missing dojo-signature header"))?
        .to_str()
        .map_err(|_| ApiError::BadSignature("invalid dojo-signature"))?
        .to_owned())
}

fn signed_by(location: &Location, body: &[u8], header: &str) -> bool {
    let keys: Vec<&str> = location
        .webhook_secrets
        .iter()
        .map(|s| s.expose())
        .collect();
    !keys.is_empty() && signature::verify(&keys, body, header)
}

/// `POST /v1/webhooks/dojo`.
#[utoipa::path(
    post,
    operation_id = "webhook",
    path = "/v1/webhooks/dojo",
    tag = "events",
    description = "Dojo webhooks (dojo-api.md §2b), verified by `dojo-signature` over the raw body; the location whose secret signed it is the delivery's.",
    request_body(content = DojoEvent, content_type = "application/json"),
    responses(DeliveryAnswers),
    security(("dojoSignature" = []))
)]
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let tenant = Tenant::default();
    let name = "POST /v1/webhooks/dojo";
    deliver(
        &tenant,
        &req,
        &state,
        Channel::Webhook,
        name,
        |ids, tenant| root_inner(&req, payload, &state, ids, tenant),
    )
    .await
}

async fn root_inner(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    ids: Ids,
    tenant: &Tenant,
) -> Result<HttpResponse, ApiError> {
    let locations = state.locations.current();
    if locations.iter().all(|l| l.webhook_secrets.is_empty()) {
        return Err(ApiError::NotConfigured);
    }
    let header = signature_header(req)?;
    check_content_type(req)?;
    let body = read_body(req, payload).await?;
    let location: Arc<Location> = locations
        .iter()
        .find(|l| signed_by(l, &body, &header))
        .cloned()
        .ok_or(ApiError::BadSignature("invalid dojo-signature"))?;
    tenant.set(&location);
    let headers = RequestorHeaders::default();
    accept_and_answer(state, Channel::Webhook, headers, &body, &ids, &location).await
}

/// `POST /locations/{id}/v1/webhooks/dojo`.
#[utoipa::path(
    post,
    operation_id = "webhook_at_location",
    path = "/locations/{location}/v1/webhooks/dojo",
    tag = "events",
    description = "Dojo webhooks for one location (docs/LOCATIONS.md): only its secrets, only its accountId.",
    request_body(content = DojoEvent, content_type = "application/json"),
    params(("location" = String, Path, description = "A location id of the locations file")),
    responses(DeliveryAnswers),
    security(("dojoSignature" = []))
)]
pub async fn handle_at(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let tenant = Tenant::default();
    let name = "POST /locations/{location}/v1/webhooks/dojo";
    deliver(
        &tenant,
        &req,
        &state,
        Channel::Webhook,
        name,
        |ids, tenant| located_inner(&req, &path, payload, &state, ids, tenant),
    )
    .await
}

async fn located_inner(
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    state: &State,
    ids: Ids,
    tenant: &Tenant,
) -> Result<HttpResponse, ApiError> {
    let location = path_location(state, id, tenant)?;
    if location.webhook_secrets.is_empty() {
        return Err(ApiError::NotConfigured);
    }
    let header = signature_header(req)?;
    check_content_type(req)?;
    let body = read_body(req, payload).await?;
    if !signed_by(&location, &body, &header) {
        return Err(ApiError::BadSignature("invalid dojo-signature"));
    }
    let headers = RequestorHeaders::default();
    accept_and_answer(state, Channel::Webhook, headers, &body, &ids, &location).await
}
