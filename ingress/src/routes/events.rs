//! `POST /v1/events`: Dojo's REST HandleEvent capability, behind HTTP Basic auth.

use super::{accept_and_answer, check_content_type, deliver, read_body};
use crate::auth::check_basic;
use crate::error::ApiError;
use crate::State;
use actix_web::{web, HttpRequest, HttpResponse};
use common::telemetry::Ids;
use common::{Channel, RequestorHeaders};

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    deliver(&req, &state, Channel::Rest, "POST /v1/events", |ids| {
        handle_inner(&req, payload, &state, ids)
    })
    .await
}

async fn handle_inner(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    ids: Ids,
) -> Result<HttpResponse, ApiError> {
    let credentials = state
        .settings
        .rest
        .as_ref()
        .ok_or(ApiError::NotConfigured)?;
    // Credentials first: an unauthenticated body is never read.
    check_basic(req.headers().get("authorization"), credentials)?;
    check_content_type(req)?;
    let body = read_body(req, payload).await?;
    accept_and_answer(state, Channel::Rest, requestor_headers(req), &body, &ids).await
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
