//! The one path every delivery takes once its sender is authenticated, whatever the
//! channel: validate the event, wrap it in the queue envelope, publish it and wait for
//! the broker's confirm. Only an `Ok` here may be answered with success to Dojo.

use crate::broker::{Outgoing, PublishError, Publisher};
use common::telemetry;
use common::{Channel, DojoEvent, Envelope, RequestorHeaders, ValidationError};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    NotQueued(#[from] PublishError),
}

/// The trace an event belongs to: continued from Dojo's `traceparent`, or new.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: String,
    /// The `traceparent` passed on to the processor in the AMQP headers.
    pub traceparent: String,
}

impl Trace {
    pub fn continue_or_start(incoming: Option<&str>) -> Self {
        let trace_id = incoming
            .and_then(telemetry::trace_id_from_traceparent)
            .unwrap_or_else(telemetry::new_trace_id);
        let traceparent = telemetry::traceparent(&trace_id);
        Self {
            trace_id,
            traceparent,
        }
    }
}

/// Validates `body` as a Dojo event and queues it durably. Returns the event on success.
pub async fn accept(
    publisher: &Publisher,
    channel: Channel,
    headers: RequestorHeaders,
    body: &[u8],
    trace: &Trace,
) -> Result<DojoEvent, AcceptError> {
    let event = DojoEvent::from_json(body)?;
    let raw: &RawValue = serde_json::from_slice(body)
        .map_err(|e| ValidationError(format!("body is not valid JSON: {e}")))?;
    let message = Envelope::new(channel, headers, raw).to_bytes();
    publisher
        .publish(Outgoing {
            body: &message,
            message_id: &event.id,
            routing_key: common::topology::routing_key(event.event.as_str()),
            traceparent: &trace.traceparent,
        })
        .await?;
    tracing::info!(
        trace_id = %trace.trace_id,
        event_id = %event.id,
        event_type = %event.event,
        account_id = %event.account_id,
        channel = %channel,
        "event queued"
    );
    Ok(event)
}
