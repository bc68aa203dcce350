//! Reading one message: the envelope, the event, and the trace context it carries.

use common::topology::TRACEPARENT_HEADER;
use common::{DojoEvent, Envelope};
use lapin::types::{AMQPValue, FieldTable};

/// How a delivery is to be settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done (applied, stale, ignored or duplicate): remove it from the queue.
    Ack,
    /// Not done, and we are stopping: give it back for another consumer.
    Requeue,
    /// Failed for a passing reason: try again later (through a delay queue).
    Retry(String),
    /// Can never be processed: park it in the dead-letter queue with this reason.
    Dead(String),
}

/// The W3C `traceparent` ingress put in the AMQP headers, if any.
pub fn traceparent(headers: Option<&FieldTable>) -> Option<String> {
    match headers?.inner().get(TRACEPARENT_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The envelope and its event, or why the message can never be processed.
pub fn parse(body: &[u8]) -> Result<(Envelope<'_>, DojoEvent), String> {
    let envelope = Envelope::parse(body).map_err(|e| e.to_string())?;
    let event = DojoEvent::from_json(envelope.event.get().as_bytes()).map_err(|e| {
        // Some of its messages say "invalid event: ..." already.
        let e = e.to_string();
        if e.starts_with("invalid event:") {
            e
        } else {
            format!("invalid event: {e}")
        }
    })?;
    Ok((envelope, event))
}

/// A client span (Redis or PostgreSQL) under `parent`, with its ids recorded.
#[macro_export]
macro_rules! client_span {
    ($name:expr, $system:expr, $operation:expr, $parent:expr) => {{
        let span = if common::telemetry::exporting() {
            tracing::info_span!(
                "client",
                otel.name = $name,
                otel.kind = "client",
                db.system.name = $system,
                db.operation.name = $operation,
                messaging.batch.message_count = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        common::telemetry::adopt_child(&span, $parent);
        span
    }};
}
