//! Moving a delivery elsewhere once its fate is known: to a delay queue for a later
//! attempt, or to the dead-letter queue. The copy is always confirmed by the broker
//! before the original is acked (by the caller).

use crate::retry::{attempts, ATTEMPT_HEADER, FIRST_FAILURE_HEADER, LAST_ERROR_HEADER};
use crate::Worker;
use common::topology;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation};

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

pub async fn dead_letter(
    channel: &Channel,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), String> {
    let now = chrono::Utc::now().to_rfc3339();
    let mut extra = vec![
        (topology::DEAD_REASON_HEADER, text(reason)),
        (topology::DEAD_AT_HEADER, text(&now)),
    ];
    // A replayed dead letter keeps the time of its first failure (`processor dlq replay`).
    let failed_before = delivery
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(FIRST_FAILURE_HEADER));
    if !failed_before {
        extra.push((FIRST_FAILURE_HEADER, text(&now)));
    }
    republish(channel, delivery, topology::DEAD_QUEUE, extra).await?;
    tracing::warn!(reason, "message dead-lettered");
    Ok(())
}

/// The delay queue of a transient failure's next attempt; `None` once the schedule
/// (`PROCESSOR_RETRY_ATTEMPTS`) is exhausted and the delivery goes to the dead letters.
pub fn next_retry_queue(worker: &Worker, delivery: &Delivery) -> Option<String> {
    let attempt = attempts(delivery.properties.headers().as_ref()) + 1;
    worker.settings.retry.queue_for(attempt)
}

/// Sends a transient failure to the delay queue of its next attempt, or to the
/// dead-letter queue once the schedule is exhausted.
pub async fn retry_later(
    worker: &Worker,
    channel: &Channel,
    delivery: &Delivery,
    error: &str,
) -> Result<(), String> {
    let headers = delivery.properties.headers().as_ref();
    let attempt = attempts(headers) + 1;
    let Some(queue) = next_retry_queue(worker, delivery) else {
        return dead_letter(
            channel,
            delivery,
            // `attempt` counts this last try: the first one and every delayed retry.
            &format!("gave up after {attempt} attempts: {error}"),
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
