//! The EPOSError body Dojo expects on every failed delivery (REST and WebSocket alike).

use serde::{Deserialize, Serialize};

/// `errorType` values Dojo defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ErrorType {
    NotFound,
    UnexpectedError,
    InvalidRequest,
    Conflict,
}

/// Dojo's error body (dojo-api.md §2a): `errorType` always, a message for a person, and
/// the trace id that is also in this service's logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"errorType": "InvalidRequest", "debugMessage": "invalid event: missing field `id`", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"}))]
pub struct EposError {
    pub error_type: ErrorType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl EposError {
    pub fn new(error_type: ErrorType, debug_message: impl Into<String>, trace_id: &str) -> Self {
        Self {
            error_type,
            debug_message: Some(debug_message.into()),
            trace_id: Some(trace_id.to_owned()),
        }
    }
}
