//! What happens to one message: parse, dedupe, apply, retry transient failures.

use crate::apply::{apply, Incoming};
use crate::dedupe::Claim;
use crate::rule::Outcome;
use crate::Worker;
use common::topology::TRACEPARENT_HEADER;
use common::{DojoEvent, Envelope};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::sync::watch;

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

fn trace_id(headers: Option<&FieldTable>) -> String {
    let value = headers.and_then(|h| h.inner().get(TRACEPARENT_HEADER).cloned());
    let text = match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    };
    common::telemetry::trace_id_from_traceparent(&text).unwrap_or_default()
}

pub async fn handle(
    worker: &Worker,
    body: &[u8],
    headers: Option<&FieldTable>,
    mut stop: watch::Receiver<bool>,
) -> Verdict {
    let trace_id = trace_id(headers);
    let envelope = match Envelope::parse(body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(trace_id, error = %e, "unprocessable message");
            return Verdict::Dead(e.to_string());
        }
    };
    let payload = envelope.event.get();
    let event = match DojoEvent::from_json(payload.as_bytes()) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(trace_id, error = %e, "unprocessable event");
            return Verdict::Dead(format!("invalid event: {e}"));
        }
    };
    let (account, id) = (event.account_id.as_str(), event.id.as_str());
    if worker.dedupe.claim(account, id).await == Claim::Done {
        tracing::debug!(trace_id, event_id = id, "duplicate (redis)");
        return Verdict::Ack;
    }
    let incoming = Incoming {
        event: &event,
        channel: envelope.channel,
        received_at: envelope.received_at,
        payload,
    };
    // A blip (a deadlock, a dropped connection) is retried at once, twice; anything
    // longer goes through the delay queues so this consumer keeps its slots.
    let mut quick = [Duration::from_millis(50), Duration::from_millis(250)].into_iter();
    loop {
        match apply(&worker.pool, &incoming).await {
            Ok(outcome) => {
                worker.dedupe.done(account, id).await;
                log_outcome(&trace_id, &event, outcome);
                return Verdict::Ack;
            }
            Err(e) if crate::db::is_transient(&e) => match quick.next() {
                Some(pause) => {
                    tracing::debug!(trace_id, event_id = id, error = %e, "transient failure; retrying at once");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {
                            worker.dedupe.release(account, id).await;
                            return Verdict::Requeue;
                        }
                    }
                }
                None => {
                    worker.dedupe.release(account, id).await;
                    tracing::warn!(trace_id, event_id = id, error = %e, "database unavailable; retrying later");
                    return Verdict::Retry(e.to_string());
                }
            },
            Err(e) => {
                worker.dedupe.release(account, id).await;
                tracing::error!(trace_id, event_id = id, error = %e, "event cannot be stored");
                return Verdict::Dead(format!("database rejected the event: {e}"));
            }
        }
    }
}

fn log_outcome(trace_id: &str, event: &DojoEvent, outcome: Outcome) {
    tracing::info!(
        trace_id,
        event_id = %event.id,
        event_type = %event.event,
        account_id = %event.account_id,
        payment_intent_id = event.data.payment_intent_id.as_deref().unwrap_or(""),
        outcome = outcome.as_str(),
        "event processed"
    );
}
