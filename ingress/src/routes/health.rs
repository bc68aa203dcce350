//! `/healthz` (the process runs) and `/readyz` (events can be durably accepted now).

use crate::State;
use actix_web::{web, HttpResponse};
use serde_json::json;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<State>) -> HttpResponse {
    if state.publisher.is_ready() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "broker": "disconnected"}))
    }
}

/// Prometheus text format; connection gauges are read at scrape time.
pub async fn metrics(state: web::Data<State>) -> HttpResponse {
    let m = &state.intake.metrics;
    m.broker_connected
        .set(i64::from(state.publisher.is_ready()));
    if let Some(ws) = &state.ws_connected {
        m.websocket_connected
            .set(i64::from(ws.load(std::sync::atomic::Ordering::SeqCst)));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(common::metrics::render(&m.registry))
}
