//! `/healthz` (the process runs), `/readyz` (events can be durably accepted now),
//! `/metrics`, and `/openapi.json` (this service's description, generated from the code).
//!
//! Readiness is about the broker only: a Dojo WebSocket outage must not take the
//! webhook and REST routes out of a load balancer. The sockets' state is in the body,
//! as information (`websockets`: lease held, sockets wanted, open).

use crate::error::JsonLine;
use crate::openapi::{Health, Readiness};
use crate::State;
use actix_web::{web, HttpResponse};
use utoipa::OpenApi;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json_line(Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Events can be durably accepted now", body = Readiness),
        (status = 503, description = "The broker cannot take events now (disconnected, blocked, or the publish path keeps failing)", body = Readiness),
    )
)]
pub async fn readyz(state: web::Data<State>) -> HttpResponse {
    let ready = state.publisher.is_ready();
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        broker: state.publisher.state(),
        broker_detail: state.publisher.detail(),
        websockets: state.sockets.status(),
    };
    if ready {
        HttpResponse::Ok().json_line(body)
    } else {
        HttpResponse::ServiceUnavailable().json_line(body)
    }
}

/// Prometheus text format; connection gauges are read at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format (docs/OPERATIONS.md lists the series)", body = String, content_type = "text/plain"))
)]
pub async fn metrics(state: web::Data<State>) -> HttpResponse {
    let m = &state.intake.metrics;
    m.broker_connected
        .set(i64::from(state.publisher.is_ready()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&m.registry))
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This description (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json_line(crate::openapi::IngressApi::openapi())
}
