//! Dojo's payment-intent API, faked over a scenario's truth (dojo-api.md §4b, §4c):
//!
//! - `GET /payment-intents/{id}[?returnCanceled=true]`: the intent, if the key's account
//!   owns it; a `Canceled` one answers 404 unless `returnCanceled=true`, as Dojo does;
//! - `POST /payment-intents/search`: `statuses`, `startDate`/`endDate` on `createdAt`,
//!   ordered by `createdAt` then id, paged by `cursor.limit` (default 50, at most 100)
//!   and an opaque `after` cursor.
//!
//! Every call needs `Authorization: Basic <key>` of a known key (else 401) and a
//! `version` header (else 400); [`Fault`] answers 429, 500 or slowly first.

use crate::fake_api::{refused, remember, unauthorized, Fault, State};
use actix_web::{web, HttpRequest, HttpResponse};
use common::dojo_api::{PaymentIntent, SearchPage, SearchRequest};
use std::sync::Arc;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/payment-intents/search", web::post().to(search))
        .route("/payment-intents/{id}", web::get().to(get));
}

fn problem(status: u16, title: &str) -> HttpResponse {
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
    )
    .content_type("application/problem+json")
    .body(serde_json::json!({"title": title, "status": status}).to_string())
}

/// Checks key, version and faults; `Ok(account)` of the key, or the answer to give.
async fn admit(req: &HttpRequest, body: &[u8], state: &State) -> Result<String, HttpResponse> {
    remember(req, body, state);
    if let Some(answer) = refused(req, state) {
        return Err(answer);
    }
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .unwrap_or("");
    let account = state.keys.lock().expect("lock").get(key).cloned();
    let Some(account) = account else {
        return Err(unauthorized());
    };
    if req.headers().get("version").is_none() {
        return Err(problem(400, "The version header is required."));
    }
    let fault = *state.fault.lock().expect("lock");
    match fault {
        Fault::None => {}
        Fault::TooManyRequests { retry_after_secs } => {
            let mut answer = problem(429, "Too Many Requests");
            answer.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                retry_after_secs.into(),
            );
            return Err(answer);
        }
        Fault::ServerError => return Err(problem(500, "Internal Server Error")),
        Fault::Slow(delay) => tokio::time::sleep(delay).await,
    }
    Ok(account)
}

async fn get(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<Arc<State>>,
) -> HttpResponse {
    let account = match admit(&req, &[], &state).await {
        Ok(a) => a,
        Err(answer) => return answer,
    };
    let with_canceled = req
        .query_string()
        .split('&')
        .any(|p| p == "returnCanceled=true");
    let found = state
        .intents
        .lock()
        .expect("lock")
        .get(id.as_str())
        .filter(|t| t.account_id == account)
        .map(|t| t.intent.clone());
    match found {
        Some(pi) if with_canceled || pi.status.as_deref() != Some("Canceled") => {
            HttpResponse::Ok().json(pi)
        }
        _ => problem(404, "Not Found"),
    }
}

async fn search(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<State>>) -> HttpResponse {
    let account = match admit(&req, &body, &state).await {
        Ok(a) => a,
        Err(answer) => return answer,
    };
    let Ok(request) = serde_json::from_slice::<SearchRequest>(&body) else {
        return problem(400, "The search request is not valid.");
    };
    let limit = match request.cursor.limit {
        0 => 50,
        n => n.min(100) as usize,
    };
    let mut matching: Vec<PaymentIntent> = state
        .intents
        .lock()
        .expect("lock")
        .values()
        .filter(|t| t.account_id == account)
        .map(|t| t.intent.clone())
        .filter(|pi| {
            let at = pi.created_at;
            request
                .start_date
                .is_none_or(|s| at.is_some_and(|a| a >= s))
                && request.end_date.is_none_or(|e| at.is_some_and(|a| a < e))
                && (request.statuses.is_empty()
                    || pi
                        .status
                        .as_ref()
                        .is_some_and(|s| request.statuses.contains(s)))
        })
        .collect();
    matching.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let from: usize = request
        .cursor
        .after
        .as_deref()
        .and_then(|c| c.strip_prefix("o"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let to = (from + limit).min(matching.len());
    let data = matching.get(from..to).unwrap_or_default().to_vec();
    HttpResponse::Ok().json(SearchPage {
        data,
        before: (from > 0).then(|| format!("o{from}")),
        after: (to < matching.len()).then(|| format!("o{to}")),
    })
}
