//! `POST /v1/events` and `POST /locations/{id}/v1/events`: Dojo's REST HandleEvent
//! capability, behind HTTP Basic auth. On the root route the credentials' username names
//! the location; under `/locations/{id}` only that location's credentials are accepted.

use super::{accept_and_answer, check_content_type, deliver, path_location, read_body, Tenant};
use crate::auth::{check_basic, identify_basic};
use crate::error::ApiError;
use crate::openapi::{DeliveryAnswers, RequestorHeaderParams};
use crate::State;
use actix_web::{web, HttpRequest, HttpResponse};
use common::locations::Location;
use common::telemetry::Ids;
use common::DojoEvent;
use common::{Channel, RequestorHeaders};
use std::sync::Arc;

/// `POST /v1/events`: the location whose REST credentials were presented.
#[utoipa::path(
    post,
    operation_id = "rest_event",
    path = "/v1/events",
    tag = "events",
    description = "Dojo's REST HandleEvent capability (dojo-api.md §2a). The REST username names the location; answered only after RabbitMQ confirmed the event.",
    request_body(content = DojoEvent, content_type = "application/json"),
    params(RequestorHeaderParams),
    responses(DeliveryAnswers),
    security(("basic" = []))
)]
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let tenant = Tenant::default();
    let name = "POST /v1/events";
    deliver(&tenant, &req, &state, Channel::Rest, name, |ids, tenant| {
        root_inner(&req, payload, &state, ids, tenant)
    })
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
    if locations.iter().all(|l| l.rest.is_none()) {
        return Err(ApiError::NotConfigured);
    }
    // Credentials first: an unauthenticated body is never read.
    let location = identify_basic(req.headers().get("authorization"), &locations)?;
    tenant.set(&location);
    receive(req, payload, state, ids, &location).await
}

/// `POST /locations/{id}/v1/events`.
#[utoipa::path(
    post,
    operation_id = "rest_event_at_location",
    path = "/locations/{location}/v1/events",
    tag = "events",
    description = "Dojo's REST HandleEvent capability for one location (docs/LOCATIONS.md): only its credentials, only its accountId.",
    request_body(content = DojoEvent, content_type = "application/json"),
    params(
        ("location" = String, Path, description = "A location id of the locations file"),
        RequestorHeaderParams
    ),
    responses(DeliveryAnswers),
    security(("basic" = []))
)]
pub async fn handle_at(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let tenant = Tenant::default();
    let name = "POST /locations/{location}/v1/events";
    deliver(&tenant, &req, &state, Channel::Rest, name, |ids, tenant| {
        located_inner(&req, &path, payload, &state, ids, tenant)
    })
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
    let credentials = location.rest.as_ref().ok_or(ApiError::NotConfigured)?;
    check_basic(req.headers().get("authorization"), credentials)?;
    receive(req, payload, state, ids, &location).await
}

async fn receive(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    ids: Ids,
    location: &Arc<Location>,
) -> Result<HttpResponse, ApiError> {
    check_content_type(req)?;
    let body = read_body(req, payload).await?;
    let headers = requestor_headers(req);
    accept_and_answer(state, Channel::Rest, headers, &body, &ids, location).await
}

fn requestor_headers(req: &HttpRequest) -> RequestorHeaders {
    let get = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect::<String>())
    };
    RequestorHeaders {
        waiter_id: get("waiter-id"),
        dojo_requesting_product: get("dojo-requesting-product"),
        device_id: get("device-id"),
        device_type: get("device-type"),
    }
}
