//! The one path every delivery takes once its sender is authenticated, whatever the
//! channel: validate the event, wrap it in the queue envelope, publish it (in a producer
//! span whose `traceparent` travels in the AMQP headers) and wait for the broker's
//! confirm. Only an `Ok` here may be answered with success to Dojo.

use crate::broker::{Outgoing, PublishError, Publisher};
use crate::metrics::Metrics;
use common::telemetry::{adopt_child, Ids};
use common::topology;
use common::{Channel, DojoEvent, Envelope, RequestorHeaders, ValidationError};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    NotQueued(#[from] PublishError),
}

/// What every channel hands its deliveries to.
#[derive(Clone)]
pub struct Intake {
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
}

/// Declares the span of one delivery on a channel (a server span of Dojo's request).
#[macro_export]
macro_rules! delivery_span {
    ($name:expr, $channel:expr) => {
        if common::telemetry::exporting() {
            tracing::info_span!(
                "delivery",
                otel.name = $name,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                dojo.channel = $channel,
                dojo.event.id = tracing::field::Empty,
                dojo.event.type = tracing::field::Empty,
                dojo.account.id = tracing::field::Empty,
                dojo.payment_intent.id = tracing::field::Empty,
                dojo.answer = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            )
        } else {
            tracing::info_span!("delivery", trace_id = tracing::field::Empty, span_id = tracing::field::Empty)
        }
    };
}

impl Intake {
    /// Validates `body` as a Dojo event and queues it durably, as a child of the
    /// delivery span `parent`. Returns the event on success.
    pub async fn accept(
        &self,
        channel: Channel,
        headers: RequestorHeaders,
        body: &[u8],
        parent: &Ids,
    ) -> Result<DojoEvent, AcceptError> {
        let event = DojoEvent::from_json(body)?;
        let delivery = tracing::Span::current();
        delivery.record("dojo.event.id", event.id.as_str());
        delivery.record("dojo.event.type", event.event.as_str());
        delivery.record("dojo.account.id", event.account_id.as_str());
        if let Some(pi) = &event.data.payment_intent_id {
            delivery.record("dojo.payment_intent.id", pi.as_str());
        }
        let raw: &RawValue = serde_json::from_slice(body)
            .map_err(|e| ValidationError(format!("body is not valid JSON: {e}")))?;
        let message = Envelope::new(channel, headers, raw).to_bytes();
        let routing_key = topology::routing_key(event.event.as_str());
        let span = if common::telemetry::exporting() {
            tracing::info_span!(
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
            )
        } else {
            tracing::info_span!("publish", trace_id = Empty, span_id = Empty)
        };
        let ids = adopt_child(&span, parent);
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
            channel = %channel,
            "event queued"
        );
        Ok(event)
    }
}
