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
