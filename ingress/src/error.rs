//! One mapping from what went wrong to the HTTP status and EPOSError body Dojo sees.
//! 5xx bodies are opaque; the cause goes to the log, under the same trace id.

use crate::broker::PublishError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};
use common::{EposError, ErrorType};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("route not configured")]
    NotConfigured,
    /// An event route asked with another method than POST.
    #[error("method not allowed: event routes take POST")]
    MethodNotAllowed,
    #[error("no such location")]
    UnknownLocation,
    #[error("the event's accountId is not this location's")]
    WrongAccount,
    /// Missing or wrong Basic credentials (the REST routes: a Basic challenge).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Missing or wrong `dojo-signature` (the webhook routes: no Basic challenge).
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("content type {0:?} is not JSON")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Invalid(String),
    #[error("event not queued: {0}")]
    Unavailable(#[from] PublishError),
}

/// JSON answers end with a newline, like any text a person may `curl`.
pub trait JsonLine {
    fn json_line(&mut self, value: impl serde::Serialize) -> HttpResponse;
}

impl JsonLine for HttpResponseBuilder {
    fn json_line(&mut self, value: impl serde::Serialize) -> HttpResponse {
        self.content_type("application/json")
            .body(common::json_line(&value))
    }
}

/// Seconds Dojo is asked to wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotConfigured | Self::UnknownLocation => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::WrongAccount => StatusCode::UNAUTHORIZED,
            Self::Unauthorized(_) | Self::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_type(&self) -> ErrorType {
        match self {
            Self::NotConfigured | Self::UnknownLocation => ErrorType::NotFound,
            Self::Unavailable(_) => ErrorType::UnexpectedError,
            _ => ErrorType::InvalidRequest,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => "the event could not be stored; retry later".into(),
            other => other.to_string(),
        }
    }

    /// The `answer` label of the metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnknownLocation => "unknown_location",
            Self::WrongAccount => "wrong_account",
            Self::Unauthorized(_) | Self::BadSignature(_) => "unauthorized",
            Self::TooLarge(_) => "too_large",
            Self::BodyTimeout(_) => "timeout",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Invalid(_) => "invalid",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Logs the error with its trace id and builds the answer.
    pub fn respond(&self, trace_id: &str) -> HttpResponse {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(trace_id, status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::warn!(trace_id, status = status.as_u16(), error = %self, "request rejected");
        }
        let mut response = HttpResponse::build(status);
        match self {
            Self::Unavailable(_) => {
                response.insert_header(("Retry-After", RETRY_AFTER_SECS));
            }
            Self::Unauthorized(_) => {
                response.insert_header(("WWW-Authenticate", "Basic realm=\"dojo-events\""));
            }
            Self::MethodNotAllowed => {
                response.insert_header(("Allow", "POST"));
            }
            _ => {}
        }
        response.json_line(EposError::new(
            self.error_type(),
            self.public_message(),
            trace_id,
        ))
    }
}
