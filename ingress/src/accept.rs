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
use serde_json::value::RawValue;
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
                location = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "delivery",
                location = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            )
        }
    };
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
        let event = DojoEvent::from_json(body)?;
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
        let raw: &RawValue = serde_json::from_slice(body)
            .map_err(|e| ValidationError(format!("body is not valid JSON: {e}")))?;
        let message = Envelope::new(channel, headers, raw)
            .at_location(&location.id)
            .to_bytes();
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
            location = %location.id,
            channel = %channel,
            "event queued"
        );
        Ok(event)
    }
}
