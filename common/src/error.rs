//! The EPOSError body Dojo expects on every failed delivery (REST and WebSocket alike).

use serde::{Deserialize, Serialize};

/// `errorType` values Dojo defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorType {
    NotFound,
    UnexpectedError,
    InvalidRequest,
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
