//! The one path every delivery takes once its sender is authenticated, whatever the
//! channel: validate the event, wrap it in the queue envelope, publish it (in a producer
//! span whose `traceparent` travels in the AMQP headers) and wait for the broker's
//! confirm. Only an `Ok` here may be answered with success to Dojo.
//!
//! Every check a delivery must pass once its sender is known lives here, so no channel
//! can skip one: the size limit ([`MAX_EVENT`]), validation, and tenant binding (the
//! event's `accountId` must be the authenticating location's, dojo-api.md §4a).

use crate::broker::{Outgoing, PublishError, Publisher};
use crate::metrics::Metrics;
use common::locations::Location;
use common::telemetry::{adopt_child, Ids};
use common::topology;
use common::{Channel, DojoEvent, Envelope, RequestorHeaders, ValidationError};
use std::sync::Arc;
use std::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

/// Largest accepted event (CONTRACT.md): 64 KiB, on every channel.
pub const MAX_EVENT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("event is larger than {MAX_EVENT} bytes")]
    TooLarge,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Authenticated as `location`, but the event is another account's.
    #[error("accountId {account:?} is not the account of location {location:?}")]
    WrongAccount { location: String, account: String },
    #[error(transparent)]
    NotQueued(#[from] PublishError),
}

/// What every channel hands its deliveries to.
#[derive(Clone)]
pub struct Intake {
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
}

/// The span of one delivery on a channel (a server span of Dojo's request), continuing
/// `incoming` (a W3C `traceparent`, when Dojo sent one), and its ids.
///
/// It never has a tracing parent: without `incoming` it starts a trace of its own, so
/// the requests of one long-lived WebSocket (whose reader runs inside the socket's
/// span) are one trace each, not one trace per socket.
///
/// Without span export the span carries only what the logs need, given at creation
/// (`trace_id`, `span_id`, and `location` once known): each field recorded later costs a
/// formatting step on every request.
pub fn delivery_span(
    name: &'static str,
    channel: &'static str,
    incoming: Option<&str>,
) -> (tracing::Span, Ids) {
    if common::telemetry::exporting() {
        let span = tracing::info_span!(
            parent: None,
            "delivery",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = Empty,
            dojo.channel = channel,
            dojo.event.id = Empty,
            dojo.event.type = Empty,
            dojo.account.id = Empty,
            dojo.payment_intent.id = Empty,
            dojo.answer = Empty,
            location = Empty,
            trace_id = Empty,
            span_id = Empty,
        );
        let ids = common::telemetry::adopt(&span, incoming);
        (span, ids)
    } else {
        let ids = common::telemetry::continue_trace(incoming);
        let span = tracing::info_span!(
            parent: None,
            "delivery",
            location = Empty,
            trace_id = ids.trace_id.as_str(),
            span_id = ids.span_id.as_str()
        );
        (span, ids)
    }
}

impl Intake {
    /// Validates `body` as a Dojo event of `location` and queues it durably, as a child
    /// of the delivery span `parent`. Returns the event on success.
    pub async fn accept(
        &self,
        channel: Channel,
        headers: RequestorHeaders,
        body: &[u8],
        parent: &Ids,
        location: &Location,
    ) -> Result<DojoEvent, AcceptError> {
        if body.len() > MAX_EVENT {
            return Err(AcceptError::TooLarge);
        }
        // UTF-8 first: the envelope carries the body as text (and JSON must be UTF-8,
        // RFC 8259 §8.1), so nothing acknowledged can fail to parse downstream.
        let text = std::str::from_utf8(body)
            .map_err(|e| ValidationError(format!("body is not valid UTF-8: {e}")))?;
        let event = DojoEvent::from_json(text.as_bytes())?;
        if !location.owns_account(&event.account_id) {
            self.metrics
                .wrong_account
                .with_label_values(&[&location.id, channel.as_str()])
                .inc();
            return Err(AcceptError::WrongAccount {
                location: location.id.clone(),
                account: event.account_id.chars().take(100).collect(),
            });
        }
        let delivery = tracing::Span::current();
        delivery.record("dojo.event.id", event.id.as_str());
        delivery.record("dojo.event.type", event.event.as_str());
        delivery.record("dojo.account.id", event.account_id.as_str());
        if let Some(pi) = &event.data.payment_intent_id {
            delivery.record("dojo.payment_intent.id", pi.as_str());
        }
        // `from_json` parsed the whole body as one JSON value: it goes in as it came.
        let message = Envelope::wrap(channel, headers, &location.id, text);
        let routing_key = topology::routing_key(event.event.as_str());
        // Without span export the publish step has no span of its own (nothing logs
        // inside it); its ids still continue the trace in the AMQP headers.
        let (span, ids) = if common::telemetry::exporting() {
            let span = tracing::info_span!(
                "publish",
                otel.name = "publish dojo.events",
                otel.kind = "producer",
                messaging.system = "rabbitmq",
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = topology::EXCHANGE,
                messaging.rabbitmq.destination.routing_key = routing_key,
                messaging.message.id = event.id.as_str(),
                messaging.message.body.size = message.len(),
                trace_id = Empty,
                span_id = Empty,
            );
            let ids = adopt_child(&span, parent);
            (span, ids)
        } else {
            (tracing::Span::none(), parent.child())
        };
        let started = Instant::now();
        let published = self
            .publisher
            .publish(Outgoing {
                body: &message,
                message_id: &event.id,
                routing_key,
                traceparent: &ids.traceparent(),
            })
            .instrument(span.clone())
            .await;
        if let Err(e) = published {
            span.record("otel.status_code", "ERROR");
            return Err(e.into());
        }
        self.metrics
            .confirm_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            event_id = %event.id,
            event_type = %event.event,
            account_id = %event.account_id,
            location = %location.id,
            channel = %channel,
            "event queued"
        );
        Ok(event)
    }
}
