//! Settling a delivery with the broker once its fate is known: ack it, requeue it,
//! republish it to a delay queue for a later attempt, or park it in the dead-letter
//! queue. A copy is always confirmed by the broker before the original is acked.

use crate::handle::{handle, Verdict};
use crate::retry::{attempts, ATTEMPT_HEADER, FIRST_FAILURE_HEADER, LAST_ERROR_HEADER};
use crate::Worker;
use common::topology;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation};
use std::sync::atomic::Ordering;
use tokio::sync::watch;
use tracing::Instrument;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Publishes a copy of `delivery` to `queue` with `extra` headers added, and waits for
/// the broker's confirm.
async fn republish(
    channel: &Channel,
    delivery: &Delivery,
    queue: &str,
    extra: Vec<(&str, AMQPValue)>,
) -> Result<(), String> {
    let mut headers: FieldTable = delivery.properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert(name.into(), value);
    }
    if !headers.inner().contains_key("x-original-routing-key") {
        headers.insert(
            "x-original-routing-key".into(),
            text(delivery.routing_key.as_str()),
        );
    }
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            properties,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("publish to {queue} not confirmed: {other:?}")),
    }
}

async fn dead_letter(channel: &Channel, delivery: &Delivery, reason: &str) -> Result<(), String> {
    let now = chrono::Utc::now().to_rfc3339();
    let mut extra = vec![
        (topology::DEAD_REASON_HEADER, text(reason)),
        (topology::DEAD_AT_HEADER, text(&now)),
    ];
    if attempts(delivery.properties.headers().as_ref()) == 0 {
        extra.push((FIRST_FAILURE_HEADER, text(&now)));
    }
    republish(channel, delivery, topology::DEAD_QUEUE, extra).await?;
    tracing::warn!(reason, "message dead-lettered");
    Ok(())
}

/// Sends a transient failure to the delay queue of its next attempt, or to the
/// dead-letter queue once the schedule is exhausted.
async fn retry_later(
    worker: &Worker,
    channel: &Channel,
    delivery: &Delivery,
    error: &str,
) -> Result<(), String> {
    let headers = delivery.properties.headers().as_ref();
    let attempt = attempts(headers) + 1;
    let Some(queue) = worker.settings.retry.queue_for(attempt) else {
        return dead_letter(
            channel,
            delivery,
            &format!("gave up after {} attempts: {error}", attempt - 1),
        )
        .await;
    };
    let first = headers
        .and_then(|h| h.inner().get(FIRST_FAILURE_HEADER).cloned())
        .unwrap_or_else(|| text(&chrono::Utc::now().to_rfc3339()));
    let extra = vec![
        (ATTEMPT_HEADER, AMQPValue::LongLongInt(i64::from(attempt))),
        (FIRST_FAILURE_HEADER, first),
        (LAST_ERROR_HEADER, text(error)),
    ];
    republish(channel, delivery, &queue, extra).await?;
    tracing::info!(attempt, queue, "message scheduled for another attempt");
    Ok(())
}

/// Handles one delivery and settles it, all inside the delivery's consume span (a
/// child of ingress's publish span when the message carries a `traceparent`).
pub async fn settle(
    worker: &Worker,
    channel: &Channel,
    delivery: Delivery,
    stop: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "consume",
        otel.name = "process dojo.events.processor",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = topology::PROCESSOR_QUEUE,
        messaging.message.id = delivery.properties.message_id().as_ref().map(|m| m.as_str()).unwrap_or(""),
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
        dojo.event.id = tracing::field::Empty,
        dojo.event.type = tracing::field::Empty,
        dojo.account.id = tracing::field::Empty,
        dojo.payment_intent.id = tracing::field::Empty,
        dojo.outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = crate::handle::traceparent(delivery.properties.headers().as_ref());
    let ids = common::telemetry::adopt(&span, parent.as_deref());
    settle_in_span(worker, channel, delivery, stop, &span, &ids)
        .instrument(span.clone())
        .await;
}

async fn settle_in_span(
    worker: &Worker,
    channel: &Channel,
    delivery: Delivery,
    stop: watch::Receiver<bool>,
    span: &tracing::Span,
    ids: &common::telemetry::Ids,
) {
    let started = std::time::Instant::now();
    let verdict = handle(worker, &delivery.data, span, ids, stop).await;
    worker
        .metrics
        .processing
        .observe(started.elapsed().as_secs_f64());
    match &verdict {
        Verdict::Retry(_) => {
            span.record("dojo.outcome", "retried");
            worker
                .metrics
                .processed
                .with_label_values(&["retried"])
                .inc();
        }
        Verdict::Dead(_) => {
            span.record("dojo.outcome", "dead");
            span.record("otel.status_code", "ERROR");
            worker.metrics.processed.with_label_values(&["dead"]).inc();
        }
        Verdict::Ack | Verdict::Requeue => {}
    }
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    let moved = match &verdict {
        Verdict::Ack | Verdict::Requeue => Ok(()),
        Verdict::Dead(reason) => dead_letter(channel, &delivery, reason).await,
        Verdict::Retry(error) => retry_later(worker, channel, &delivery, error).await,
    };
    let settled = match (&verdict, moved) {
        (Verdict::Requeue, _) => delivery.nack(requeue).await.map(|_| false),
        (_, Ok(())) => delivery.ack(BasicAckOptions::default()).await.map(|_| true),
        (_, Err(e)) => {
            tracing::error!(error = %e, "cannot move the message; requeueing it");
            delivery.nack(requeue).await.map(|_| false)
        }
    };
    match settled {
        Ok(true) => {
            worker.settled.fetch_add(1, Ordering::SeqCst);
        }
        Ok(false) => {}
        // The channel is gone: RabbitMQ redelivers the message; dedupe makes that harmless.
        Err(e) => tracing::warn!(error = %e, "could not settle a delivery; it will be redelivered"),
    }
}
