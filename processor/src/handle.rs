//! What happens to one message: parse, dedupe, apply, retry transient failures.

use crate::apply::{apply, Incoming};
use crate::dedupe::Claim;
use crate::rule::Outcome;
use crate::Worker;
use common::telemetry::Ids;
use common::topology::TRACEPARENT_HEADER;
use common::{DojoEvent, Envelope};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

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

/// A client span (Redis or PostgreSQL) under the current span, with its ids recorded.
macro_rules! client_span {
    ($name:expr, $system:expr, $operation:expr, $parent:expr) => {{
        let span = tracing::info_span!(
            "client",
            otel.name = $name,
            otel.kind = "client",
            db.system.name = $system,
            db.operation.name = $operation,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        common::telemetry::adopt_child(&span, $parent);
        span
    }};
}

/// Handles one message inside its consume span (`span`, with ids `ids`).
pub async fn handle(
    worker: &Worker,
    body: &[u8],
    span: &tracing::Span,
    ids: &Ids,
    mut stop: watch::Receiver<bool>,
) -> Verdict {
    let envelope = match Envelope::parse(body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "unprocessable message");
            return Verdict::Dead(e.to_string());
        }
    };
    let payload = envelope.event.get();
    let event = match DojoEvent::from_json(payload.as_bytes()) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "unprocessable event");
            return Verdict::Dead(format!("invalid event: {e}"));
        }
    };
    let (account, id) = (event.account_id.as_str(), event.id.as_str());
    span.record("dojo.event.id", id);
    span.record("dojo.event.type", event.event.as_str());
    span.record("dojo.account.id", account);
    if let Some(pi) = &event.data.payment_intent_id {
        span.record("dojo.payment_intent.id", pi.as_str());
    }
    let claim = worker
        .dedupe
        .claim(account, id)
        .instrument(client_span!("redis SET NX", "redis", "SET", ids))
        .await;
    if claim == Claim::Done {
        tracing::debug!(event_id = id, "duplicate (redis)");
        span.record("dojo.outcome", "duplicate");
        worker
            .metrics
            .dedupe_hits
            .with_label_values(&["redis"])
            .inc();
        worker
            .metrics
            .processed
            .with_label_values(&["duplicate"])
            .inc();
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
        let applied = apply(&worker.pool, &incoming)
            .instrument(client_span!(
                "postgresql apply event",
                "postgresql",
                "INSERT",
                ids
            ))
            .await;
        match applied {
            Ok(outcome) => {
                worker
                    .dedupe
                    .done(account, id)
                    .instrument(client_span!("redis SET done", "redis", "SET", ids))
                    .await;
                record_outcome(worker, span, &event, outcome);
                return Verdict::Ack;
            }
            Err(e) if crate::db::is_transient(&e) => match quick.next() {
                Some(pause) => {
                    tracing::debug!(event_id = id, error = %e, "transient failure; retrying at once");
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
                    tracing::warn!(event_id = id, error = %e, "database unavailable; retrying later");
                    return Verdict::Retry(e.to_string());
                }
            },
            Err(e) => {
                worker.dedupe.release(account, id).await;
                tracing::error!(event_id = id, error = %e, "event cannot be stored");
                return Verdict::Dead(format!("database rejected the event: {e}"));
            }
        }
    }
}

fn record_outcome(worker: &Worker, span: &tracing::Span, event: &DojoEvent, outcome: Outcome) {
    span.record("dojo.outcome", outcome.as_str());
    worker
        .metrics
        .processed
        .with_label_values(&[outcome.as_str()])
        .inc();
    if outcome == Outcome::Duplicate {
        worker
            .metrics
            .dedupe_hits
            .with_label_values(&["database"])
            .inc();
    } else {
        let lag = chrono::Utc::now() - event.created_at.as_utc();
        worker.metrics.lag.observe(lag.as_seconds_f64().max(0.0));
    }
    tracing::info!(
        event_id = %event.id,
        event_type = %event.event,
        account_id = %event.account_id,
        payment_intent_id = event.data.payment_intent_id.as_deref().unwrap_or(""),
        outcome = outcome.as_str(),
        "event processed"
    );
}
