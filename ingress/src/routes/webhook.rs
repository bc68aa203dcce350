//! `POST /v1/webhooks/dojo`: Dojo webhooks, verified by `dojo-signature` over the raw body
//! before anything is parsed.

use super::{accept_and_answer, check_content_type, deliver, read_body};
use crate::error::ApiError;
use crate::State;
use actix_web::{web, HttpRequest, HttpResponse};
use common::telemetry::Ids;
use common::{signature, Channel, RequestorHeaders};

pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    deliver(
        &req,
        &state,
        Channel::Webhook,
        "POST /v1/webhooks/dojo",
        |ids| handle_inner(&req, payload, &state, ids),
    )
    .await
}

async fn handle_inner(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    ids: Ids,
) -> Result<HttpResponse, ApiError> {
    let secrets = &state.settings.webhook_secrets;
    if secrets.is_empty() {
        return Err(ApiError::NotConfigured);
    }
    let header = req
        .headers()
        .get("dojo-signature")
        .ok_or(ApiError::Unauthorized("missing dojo-signature header"))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("invalid dojo-signature"))?
        .to_owned();
    check_content_type(req)?;
    let body = read_body(req, payload).await?;
    let keys: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
    if !signature::verify(&keys, &body, &header) {
        return Err(ApiError::Unauthorized("invalid dojo-signature"));
    }
    accept_and_answer(
        state,
        Channel::Webhook,
        RequestorHeaders::default(),
        &body,
        &ids,
    )
    .await
}
