//! `/healthz` (the process runs) and `/readyz` (events can be durably accepted now).
//!
//! Readiness is about the broker only: a Dojo WebSocket outage must not take the
//! webhook and REST routes out of a load balancer. The sockets' state is in the body,
//! as information (`websockets`: lease held, sockets wanted, open).

use crate::error::JsonLine;
use crate::State;
use actix_web::{web, HttpResponse};
use serde_json::json;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json_line(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<State>) -> HttpResponse {
    let websockets = state.sockets.status();
    // `connected`, or why not: `disconnected`, `blocked` (a resource alarm), `failing`.
    let broker = state.publisher.state();
    if state.publisher.is_ready() {
        HttpResponse::Ok()
            .json_line(json!({"status": "ready", "broker": broker, "websockets": websockets}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json_line(json!({"status": "not ready", "broker": broker, "websockets": websockets}))
    }
}

/// Prometheus text format; connection gauges are read at scrape time.
pub async fn metrics(state: web::Data<State>) -> HttpResponse {
    let m = &state.intake.metrics;
    m.broker_connected
        .set(i64::from(state.publisher.is_ready()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&m.registry))
}
