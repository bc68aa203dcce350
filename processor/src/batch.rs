//! One batch of deliveries from one channel, from parse to settlement.
//!
//! Per delivery: a consume span (child of ingress's publish span), parse; what can never
//! be processed is dead-lettered on its own and never fails the batch. For the rest:
//! one Redis round trip for the claims, one PostgreSQL transaction for the events the
//! Redis markers did not rule out, one Redis round trip for the `done` markers, then one
//! `multiple` ack. A transient database failure is retried at once twice, then every
//! event of the batch goes to its delay queue; a permanent one is isolated by applying
//! the events one by one, so only the bad event is dead-lettered.

use crate::apply::{apply, Incoming};
use crate::dedupe::Claim;
use crate::handle::{parse, traceparent, Verdict};
use crate::rule::Outcome;
use crate::settle::{dead_letter, next_retry_queue, retry_later};
use crate::Worker;
use common::telemetry::{adopt, Ids};
use common::topology;
use common::{DojoEvent, Envelope};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

fn consume_span(delivery: &Delivery) -> (tracing::Span, Ids) {
    let span = if common::telemetry::exporting() {
        tracing::info_span!(
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
        )
    } else {
        tracing::info_span!(
            "consume",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        )
    };
    let ids = adopt(
        &span,
        traceparent(delivery.properties.headers().as_ref()).as_deref(),
    );
    (span, ids)
}

/// A delivery that parsed.
struct Item<'a> {
    delivery: &'a Delivery,
    span: tracing::Span,
    ids: Ids,
    envelope: Envelope<'a>,
    event: DojoEvent,
}

impl Item<'_> {
    fn key(&self) -> (&str, &str) {
        (self.event.account_id.as_str(), self.event.id.as_str())
    }

    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            event: &self.event,
            channel: self.envelope.channel,
            received_at: self.envelope.received_at,
            payload: self.envelope.event.get(),
        }
    }
}

/// Whether the queue holds a backlog, as the consumers see it: a batch that filled up
/// to `PROCESSOR_BATCH` means more deliveries were waiting than one transaction takes
/// (at a rate the processor keeps up with, batches stay well below it).
#[derive(Debug)]
pub struct Backlog {
    since: Instant,
    /// Milliseconds after `since` of the last full batch, plus one (0: never).
    last_full: std::sync::atomic::AtomicU64,
}

impl Default for Backlog {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            last_full: Default::default(),
        }
    }
}

impl Backlog {
    /// A full batch was taken now.
    pub fn full_batch(&self) {
        let at = self.since.elapsed().as_millis() as u64 + 1;
        self.last_full
            .store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a full batch was taken within `window`.
    pub fn seen_within(&self, window: std::time::Duration) -> bool {
        match self.last_full.load(std::sync::atomic::Ordering::Relaxed) {
            0 => false,
            at => {
                let now = self.since.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(at) <= window.as_millis() as u64
            }
        }
    }
}

/// Processes and settles `deliveries` (consecutive deliveries of `channel`).
pub async fn process(
    worker: &Worker,
    channel: &Channel,
    deliveries: &[Delivery],
    stop: &watch::Receiver<bool>,
) {
    let started = Instant::now();
    worker.metrics.batch_size.observe(deliveries.len() as f64);
    if deliveries.len() >= worker.settings.batch {
        worker.backlog.full_batch();
    }
    let mut items = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let (span, ids) = consume_span(delivery);
        match parse(&delivery.data) {
            Ok((envelope, event)) => {
                span.record("dojo.event.id", event.id.as_str());
                span.record("dojo.event.type", event.event.as_str());
                span.record("dojo.account.id", event.account_id.as_str());
                if let Some(pi) = &event.data.payment_intent_id {
                    span.record("dojo.payment_intent.id", pi.as_str());
                }
                items.push(Item {
                    delivery,
                    span,
                    ids,
                    envelope,
                    event,
                });
            }
            Err(reason) => {
                let _inside = span.enter();
                tracing::warn!(error = %reason, "unprocessable message");
                settle_one(worker, channel, delivery, &span, Verdict::Dead(reason))
                    .in_current_span()
                    .await;
            }
        }
    }
    stage(worker, "parse", started);
    if items.is_empty() {
        return;
    }
    let Decided { outcomes, recorded } = decide(worker, channel, &items, stop).await;
    if outcomes.contains(&Some(Outcome::Applied)) {
        // Committed changes wrote feed updates: number them now, without waiting for
        // the notification to come back from PostgreSQL.
        worker.feed.wake_sequencer();
    }
    let acking = Instant::now();
    let mut last_ack = None;
    for (item, outcome) in items.iter().zip(&outcomes) {
        worker
            .metrics
            .processing
            .observe(started.elapsed().as_secs_f64());
        // `None`: settled on its own already (retried, dead-lettered or requeued).
        if let Some(outcome) = outcome {
            record(worker, item, *outcome);
            last_ack = Some(item.delivery.delivery_tag);
        }
    }
    if let Some(tag) = last_ack {
        // Every unsettled delivery of this channel up to `tag` is in this batch and done.
        let acked = channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await;
        match acked {
            Ok(()) => {
                let n = outcomes.iter().filter(|o| o.is_some()).count() as u64;
                worker.settled.fetch_add(n, Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "could not ack a batch; it will be redelivered"),
        }
        stage(worker, "ack", acking);
    }
    // After the ack: bookkeeping for the console, never in front of the broker's ack
    // (most duplicates were kept in the batch's transaction already).
    record_duplicates(worker, &items, &outcomes, &recorded).await;
}

fn stage(worker: &Worker, name: &str, since: Instant) {
    worker
        .metrics
        .stage
        .with_label_values(&[name])
        .observe(since.elapsed().as_secs_f64());
}

/// What [`decide`] found for each item of a batch.
struct Decided {
    /// The outcome to be acked with the batch, or `None` for an item settled on its own.
    outcomes: Vec<Option<Outcome>>,
    /// Whether the item, if a duplicate, was kept in `dojo_event_duplicates` by a
    /// committed transaction already.
    recorded: Vec<bool>,
}

async fn decide(
    worker: &Worker,
    channel: &Channel,
    items: &[Item<'_>],
    stop: &watch::Receiver<bool>,
) -> Decided {
    let keys: Vec<(&str, &str)> = items.iter().map(Item::key).collect();
    let claiming = Instant::now();
    let claims = worker
        .dedupe
        .claim(&keys)
        .instrument(crate::client_span!(
            "redis SET NX",
            "redis",
            "SET",
            &items[0].ids
        ))
        .await;
    stage(worker, "redis_claim", claiming);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
    let mut recorded = vec![false; items.len()];
    let mut known = Vec::new();
    let mut todo = Vec::new();
    for (i, claim) in claims.iter().enumerate() {
        if *claim == Claim::Done {
            worker
                .metrics
                .dedupe_hits
                .with_label_values(&["redis"])
                .inc();
            outcomes[i] = Some(Outcome::Duplicate);
            known.push(i);
        } else {
            todo.push(i);
        }
    }
    if todo.is_empty() {
        return Decided { outcomes, recorded };
    }
    let applying = Instant::now();
    let applied = apply_with_retries(worker, items, &todo, &known, stop).await;
    stage(worker, "db_apply", applying);
    match applied {
        Ok(applied) => {
            for &i in todo.iter().chain(&known) {
                recorded[i] = true;
            }
            for (&i, outcome) in todo.iter().zip(applied) {
                if outcome == Outcome::Duplicate {
                    worker
                        .metrics
                        .dedupe_hits
                        .with_label_values(&["database"])
                        .inc();
                }
                outcomes[i] = Some(outcome);
            }
            let done: Vec<(&str, &str)> = todo.iter().map(|&i| keys[i]).collect();
            let marking = Instant::now();
            worker
                .dedupe
                .done(&done)
                .instrument(crate::client_span!(
                    "redis SET done",
                    "redis",
                    "SET",
                    &items[0].ids
                ))
                .await;
            stage(worker, "redis_done", marking);
        }
        Err(failure) => {
            let held: Vec<(&str, &str)> = todo.iter().map(|&i| keys[i]).collect();
            worker.dedupe.release(&held).await;
            match failure {
                Failure::Stopping => {
                    for &i in &todo {
                        settle_one(
                            worker,
                            channel,
                            items[i].delivery,
                            &items[i].span,
                            Verdict::Requeue,
                        )
                        .await;
                    }
                }
                Failure::Transient(error) => {
                    for &i in &todo {
                        let verdict = Verdict::Retry(error.clone());
                        settle_one(worker, channel, items[i].delivery, &items[i].span, verdict)
                            .await;
                    }
                }
                // A row or lock held elsewhere (the POS), or a bad event: one by one,
                // each settled on its own, so the rest of the batch is applied now and
                // only the culprit waits (retried later) or is dead-lettered.
                Failure::Contended(_) | Failure::Permanent(_) if todo.len() > 1 => {
                    for &i in &todo {
                        let single = [i];
                        let verdict = match apply_with_retries(worker, items, &single, &[], stop)
                            .await
                        {
                            Ok(o) => {
                                recorded[i] = true;
                                worker.dedupe.done(&[keys[i]]).await;
                                outcomes[i] = Some(o[0]);
                                continue;
                            }
                            Err(Failure::Stopping) => Verdict::Requeue,
                            Err(Failure::Transient(e) | Failure::Contended(e)) => Verdict::Retry(e),
                            Err(Failure::Permanent(e)) => Verdict::Dead(e),
                        };
                        settle_one(worker, channel, items[i].delivery, &items[i].span, verdict)
                            .await;
                    }
                }
                Failure::Contended(error) => {
                    let verdict = Verdict::Retry(error);
                    settle_one(
                        worker,
                        channel,
                        items[todo[0]].delivery,
                        &items[todo[0]].span,
                        verdict,
                    )
                    .await;
                }
                Failure::Permanent(error) => {
                    settle_one(
                        worker,
                        channel,
                        items[todo[0]].delivery,
                        &items[todo[0]].span,
                        Verdict::Dead(error),
                    )
                    .await;
                }
            }
        }
    }
    Decided { outcomes, recorded }
}

enum Failure {
    Stopping,
    Transient(String),
    /// A lock wait or statement cut short by the database timeouts: something else
    /// holds what this batch needs.
    Contended(String),
    Permanent(String),
}

/// Applies the items at `which` in one transaction, which also keeps the duplicate
/// deliveries among them and those at `known` (found by Redis) for the console; a blip
/// (deadlock, dropped connection) is retried at once, twice.
async fn apply_with_retries(
    worker: &Worker,
    items: &[Item<'_>],
    which: &[usize],
    known: &[usize],
    stop: &watch::Receiver<bool>,
) -> Result<Vec<Outcome>, Failure> {
    let batch: Vec<Incoming> = which.iter().map(|&i| items[i].incoming()).collect();
    let known: Vec<Incoming> = known.iter().map(|&i| items[i].incoming()).collect();
    let mut quick = [Duration::from_millis(50), Duration::from_millis(250)].into_iter();
    let mut stop = stop.clone();
    loop {
        let span = crate::client_span!(
            "postgresql apply event",
            "postgresql",
            "INSERT",
            &items[which[0]].ids
        );
        span.record("messaging.batch.message_count", batch.len());
        let has_key = |account: &str| worker.can_fetch(account);
        let scheduling = crate::apply::Scheduling {
            has_key: &has_key,
            delay: worker.settings.enrich.delay,
        };
        let scheduling = worker.settings.enrich.enabled.then_some(&scheduling);
        match apply(&worker.pool, &batch, Some(&known), scheduling)
            .instrument(span)
            .await
        {
            Ok(outcomes) => return Ok(outcomes),
            // Not retried at once: the holder is unlikely to be gone in 250 ms, and
            // each attempt would wait the whole lock timeout again.
            Err(e) if crate::db::is_timeout(&e) => {
                tracing::warn!(error = %e, events = batch.len(), "database wait timed out");
                return Err(Failure::Contended(e.to_string()));
            }
            Err(e) if crate::db::is_transient(&e) => match quick.next() {
                Some(pause) => {
                    tracing::debug!(error = %e, "transient failure; retrying at once");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return Err(Failure::Stopping),
                    }
                }
                None => {
                    tracing::warn!(error = %e, events = batch.len(), "database unavailable; retrying later");
                    return Err(Failure::Transient(e.to_string()));
                }
            },
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "the database rejected the batch");
                return Err(Failure::Permanent(format!(
                    "database rejected the event: {e}"
                )));
            }
        }
    }
}

/// Keeps the duplicate deliveries that no committed batch transaction kept
/// (`dojo_event_duplicates`, migration 0008; [`crate::apply::apply`] keeps the rest):
/// a batch of Redis duplicates only, or one whose transaction failed. Best effort: the
/// events themselves are safe in `dojo_events`, so a failure here is logged and the
/// batch stays acked.
async fn record_duplicates(
    worker: &Worker,
    items: &[Item<'_>],
    outcomes: &[Option<Outcome>],
    recorded: &[bool],
) {
    let incoming: Vec<Incoming> = items
        .iter()
        .zip(outcomes)
        .zip(recorded)
        .filter(|((_, o), r)| **o == Some(Outcome::Duplicate) && !**r)
        .map(|((i, _), _)| i.incoming())
        .collect();
    if incoming.is_empty() {
        return;
    }
    let deliveries: Vec<&Incoming> = incoming.iter().collect();
    let written = match worker.pool.acquire().await {
        Ok(mut db) => crate::apply::record_duplicates(&mut db, &deliveries).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, count = deliveries.len(), "cannot record duplicate deliveries (the events are safe)");
    }
}

fn record(worker: &Worker, item: &Item<'_>, outcome: Outcome) {
    item.span.record("dojo.outcome", outcome.as_str());
    worker
        .metrics
        .processed
        .with_label_values(&[outcome.as_str()])
        .inc();
    if outcome != Outcome::Duplicate {
        let lag = chrono::Utc::now() - item.event.created_at.as_utc();
        worker.metrics.lag.observe(lag.as_seconds_f64().max(0.0));
    }
    let _inside = item.span.enter();
    tracing::debug!(
        event_id = %item.event.id,
        event_type = %item.event.event,
        account_id = %item.event.account_id,
        payment_intent_id = item.event.data.payment_intent_id.as_deref().unwrap_or(""),
        outcome = outcome.as_str(),
        "event processed"
    );
}

/// Settles one delivery on its own: requeue, retry later, or dead-letter (then ack).
async fn settle_one(
    worker: &Worker,
    channel: &Channel,
    delivery: &Delivery,
    span: &tracing::Span,
    verdict: Verdict,
) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    let moved = match &verdict {
        Verdict::Ack | Verdict::Requeue => Ok(()),
        Verdict::Dead(reason) => {
            span.record("dojo.outcome", "dead");
            span.record("otel.status_code", "ERROR");
            worker.metrics.processed.with_label_values(&["dead"]).inc();
            dead_letter(channel, delivery, reason)
                .instrument(span.clone())
                .await
        }
        Verdict::Retry(error) => {
            // The last attempt's failure is a dead letter, and counted as one.
            let outcome = if next_retry_queue(worker, delivery).is_some() {
                "retried"
            } else {
                span.record("otel.status_code", "ERROR");
                "dead"
            };
            span.record("dojo.outcome", outcome);
            worker.metrics.processed.with_label_values(&[outcome]).inc();
            retry_later(worker, channel, delivery, error)
                .instrument(span.clone())
                .await
        }
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
        Err(e) => tracing::warn!(error = %e, "could not settle a delivery; it will be redelivered"),
    }
}
