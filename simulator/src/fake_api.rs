//! Dojo's API, faked: records every request.
//!
//! - `PUT /epos/integrations/{ws|rest}` answers with what the test or demo chose (204 by
//!   default, or an RFC 7807 problem);
//! - `GET /payment-intents/{id}` and `POST /payment-intents/search` serve the payment
//!   intents of [`FakeDojoApi::serve_truth`] (a scenario's truth), each key seeing only
//!   its account's; see [`crate::payment_intents`]. Faults ([`Fault`]): 429 with
//!   `Retry-After`, 500, slow answers; refused keys answer 401.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the payment-intent routes misbehave (registration is unaffected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// 429 Too Many Requests with `Retry-After: secs`.
    TooManyRequests { retry_after_secs: u64 },
    /// 500 with a problem body.
    ServerError,
    /// Answers correctly after this delay.
    Slow(Duration),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) requests: Mutex<Vec<Recorded>>,
    /// Payment intents by id, with their account.
    pub(crate) intents: Mutex<HashMap<String, crate::scenario::Truth>>,
    /// API key -> the account it belongs to.
    pub(crate) keys: Mutex<HashMap<String, String>>,
    pub(crate) fault: Mutex<Fault>,
    /// `(status, body)` to answer with; `None`: 204 No Content.
    answer: Mutex<Option<(u16, Value)>>,
    /// API keys answered 401 (a revoked key).
    refused_keys: Mutex<Vec<String>>,
}

pub struct FakeDojoApi {
    pub url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

pub(crate) fn remember(req: &HttpRequest, body: &[u8], state: &State) {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    state.requests.lock().expect("lock").push(Recorded {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        headers,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
}

/// The key of `Authorization: Basic <key>`, if it is refused: the 401 to answer.
pub(crate) fn refused(req: &HttpRequest, state: &State) -> Option<HttpResponse> {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .unwrap_or("");
    if state
        .refused_keys
        .lock()
        .expect("lock")
        .iter()
        .any(|k| k == key)
    {
        return Some(unauthorized());
    }
    None
}

pub(crate) fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .content_type("application/problem+json")
        .body(r#"{"title":"Unauthorized","status":401,"detail":"The API key is not valid."}"#)
}

async fn record(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<State>>) -> HttpResponse {
    remember(&req, &body, &state);
    if let Some(answer) = refused(&req, &state) {
        return answer;
    }
    match state.answer.lock().expect("lock").clone() {
        None => HttpResponse::NoContent().finish(),
        Some((status, body)) => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
        )
        .content_type("application/problem+json")
        .body(body.to_string()),
    }
}

impl FakeDojoApi {
    /// Serves on `addr` (port 0 for any) on the current Tokio runtime.
    pub fn start(addr: &str) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/epos/integrations/{kind}", web::put().to(record))
                .configure(crate::payment_intents::configure)
        })
        .workers(1)
        .disable_signals()
        .bind(addr)?;
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { url, state, handle })
    }

    /// Answer the next requests with this status and problem-details body.
    pub fn answer_with(&self, status: u16, body: Value) {
        *self.state.answer.lock().expect("lock") = Some((status, body));
    }

    /// Answer 401 to requests authenticated with `key`.
    pub fn refuse_key(&self, key: &str) {
        self.state
            .refused_keys
            .lock()
            .expect("lock")
            .push(key.into());
    }

    /// Serves these payment intents (a scenario's truth); `keys`: each API key's account.
    pub fn serve_truth<'a>(
        &self,
        truth: &HashMap<String, crate::scenario::Truth>,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.state
            .intents
            .lock()
            .expect("lock")
            .extend(truth.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.state
            .keys
            .lock()
            .expect("lock")
            .extend(keys.into_iter().map(|(k, a)| (k.to_owned(), a.to_owned())));
    }

    /// From now on the payment-intent routes misbehave so (`Fault::None`: healthy).
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().expect("lock") = fault;
    }

    /// When each payment-intent call arrived, and with which key.
    pub fn intent_calls(&self) -> Vec<(Instant, String)> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/payment-intents"))
            .map(|r| {
                let key = r
                    .headers
                    .get("authorization")
                    .and_then(|v| v.strip_prefix("Basic "))
                    .unwrap_or("")
                    .to_owned();
                (r.at, key)
            })
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}
