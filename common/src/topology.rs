//! RabbitMQ names and the topology both services declare (idempotently) at start.
//!
//! Every option that decides whether a message can be lost is spelled out here, once.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Where ingress publishes every event, once.
pub const EXCHANGE: &str = "dojo.events";
/// The processor's work queue.
pub const PROCESSOR_QUEUE: &str = "dojo.events.processor";
/// Messages that can never be processed, or that exhausted the delivery limit.
pub const DEAD_QUEUE: &str = "dojo.events.dead";
/// Binding key of the work queue (a fanout exchange ignores it; kept for readability).
pub const ALL_EVENTS: &str = "";
/// Redeliveries (crashes, rejections) after which RabbitMQ dead-letters a message instead
/// of looping on it forever.
///
/// Delivery limits of every queue declared here and in `processor/src/retry.rs`, explicit
/// because RabbitMQ 4 gives every quorum queue a limit of 20 (and drops, or dead-letters,
/// a message past it):
/// - `dojo.events.processor`: this limit, and past it dead-lettering (at-least-once) to
///   `dojo.events.dead`: never dropped. Only crashes and shutdowns requeue; failures
///   go to the delay queues as new messages, whose count starts at zero.
/// - the delay queues `dojo.events.processor.retry.*`: never consumed, so never
///   delivered; their messages leave by TTL, dead-lettered back to the work queue.
/// - `dojo.events.dead`: no limit argument (adding one would make every existing
///   deployment's redeclare fail), and none is needed: nothing ever requeues there.
///   `processor dlq` takes each message with `basic.get` and puts a copy back before it
///   acks the original, so a listed message's count never grows (a policy setting a
///   limit of 20 on every queue is tested: `e2e/tests/delivery_limit.rs`).
pub const DELIVERY_LIMIT: i64 = 50;

/// AMQP header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// AMQP headers the processor adds when it dead-letters a message itself.
pub const DEAD_REASON_HEADER: &str = "x-dead-reason";
pub const DEAD_AT_HEADER: &str = "x-dead-at";

/// The routing key for an event type: the type itself (informational: the exchange is a
/// fanout; consumers filter on it or on the message `type`), or `other` when the text
/// could not be a routing key.
pub fn routing_key(event_type: &str) -> &str {
    if !event_type.is_empty() && event_type.len() <= 200 && event_type.is_ascii() {
        event_type
    } else {
        "other"
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Arguments of a quorum queue.
pub fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    // Quorum queues replicate through Raft and survive a node loss; classic ones do not.
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

/// Arguments of a quorum queue whose dead letters go to queue `target`, confirmed
/// (at-least-once dead-lettering, which requires reject-publish overflow), so that
/// dead-lettering can never drop a message silently.
pub fn dead_lettering_to(target: &str) -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(target));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

fn work_queue_args() -> FieldTable {
    // A message rejected or redelivered too often goes to the dead-letter queue.
    let mut args = dead_lettering_to(DEAD_QUEUE);
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

/// Declares the exchange, both queues and the binding. Safe to run from any number of
/// processes at once; fails if an existing object was declared with other arguments.
pub async fn declare(channel: &Channel) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            // Fanout: every bound queue gets every event, whatever its type (an unknown
            // type must never be unroutable). Measured here, a topic exchange costs the
            // broker about 15% of its confirmed-publish rate for nothing we use.
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(DEAD_QUEUE.into(), durable, quorum_args())
        .await?;
    channel
        .queue_declare(PROCESSOR_QUEUE.into(), durable, work_queue_args())
        .await?;
    channel
        .queue_bind(
            PROCESSOR_QUEUE.into(),
            EXCHANGE.into(),
            ALL_EVENTS.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_safe() {
        assert_eq!(
            routing_key("payment_intent.created"),
            "payment_intent.created"
        );
        assert_eq!(routing_key(""), "other");
        assert_eq!(routing_key(&"x".repeat(300)), "other");
        assert_eq!(routing_key("événement"), "other");
    }
}
