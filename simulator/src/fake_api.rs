//! Dojo's capability-registration API, faked: records every `PUT
//! /epos/integrations/{ws|rest}` and answers with what the test or demo chose (204 by
//! default, or an RFC 7807 problem).

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
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

async fn record(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<State>>) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    state.requests.lock().expect("lock").push(Recorded {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
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
        return HttpResponse::Unauthorized()
            .content_type("application/problem+json")
            .body(r#"{"title":"Unauthorized","status":401,"detail":"The API key is not valid."}"#);
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

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}
