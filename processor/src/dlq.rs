//! `processor dlq list|replay|discard`: what is parked in `dojo.events.dead`, sending it
//! back, and dropping what an operator has inspected and given up on.
//!
//! Each walks the queue from its head with `basic.get`, one message at a time, at most
//! as many as it held when the command started and at most [`MAX_BATCH`] (the rest wait
//! for the next pass). A message that stays (every one for `list`, the unchosen ones for
//! `replay` and `discard`) is put back at the tail as a fresh copy,
//! confirmed, and only then is the original acked: after a full pass the queue holds
//! the same messages in the same order. It is never handed back with a requeue (nack,
//! or a channel closed with it unacked): on a quorum queue that counts as a delivery,
//! and RabbitMQ 4 drops a message past its delivery limit (20 by default), so looking
//! at the dead letters 20 times would lose them. A crash between the copy and the ack
//! can leave one message twice; replaying both is harmless. `replay` publishes each
//! chosen message back to the `dojo.events` exchange with confirms and acks its dead copy
//! only then, so a message is never lost and each dead copy is replayed once.
//! Replaying an event the processor already applied is harmless: it is deduplicated.
//! Two passes at once (two operators, or the console and the CLI) lose nothing, but each
//! may see a message the other put back twice and miss one the other holds, and the
//! order changes.

use crate::retry::{attempts, ATTEMPT_HEADER, FIRST_FAILURE_HEADER, LAST_ERROR_HEADER};
use anyhow::Context;
use common::topology::{DEAD_AT_HEADER, DEAD_QUEUE, DEAD_REASON_HEADER, EXCHANGE};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;

/// Most messages one pass looks at; a queue holding more needs more passes.
pub const MAX_BATCH: u32 = 10_000;

/// What one pass over the dead-letter queue found.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Messages the queue held when the pass started (all of them, even past [`MAX_BATCH`]).
    pub held: u32,
    /// Those looked at, oldest first: at most [`MAX_BATCH`].
    pub letters: Vec<DeadLetter>,
}

/// What one pass of `replay` or `discard` did.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Messages the queue held when the pass started.
    pub held: u32,
    /// The chosen dead letters replayed or discarded.
    pub chosen: u64,
}

impl Pass {
    /// The queue held more than one pass looks at: run it again for the rest.
    pub fn partial(&self) -> bool {
        self.held > MAX_BATCH
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub event_id: Option<String>,
    pub reason: String,
    /// Delayed retries it had (`x-attempt`): 0 for a message dead-lettered at its first
    /// try (JSON `attempts`, kept for the scripts that read it).
    pub attempts: u32,
    pub first_failure: Option<String>,
    pub dead_at: Option<String>,
    /// The message body as queued (the envelope, JSON), lossily decoded as UTF-8 and
    /// cut at 64 KiB.
    pub payload: String,
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    EventId(String),
    /// The dead letters of these event ids (what an operator saw and confirmed; one
    /// that died since is not among them).
    EventIds(std::collections::HashSet<String>),
}

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// RabbitMQ's own record (`x-death`, its first entry: the latest death) of a message it
/// dead-lettered (a delivery limit passed); `None` for those the processor parked.
fn broker_death(headers: &FieldTable) -> Option<&FieldTable> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(death) => Some(death),
        _ => None,
    }
}

/// The reason RabbitMQ gives, for messages it dead-lettered.
fn broker_reason(headers: &FieldTable) -> Option<String> {
    header_text(broker_death(headers)?, "reason").map(|r| format!("dead-lettered by RabbitMQ: {r}"))
}

/// When RabbitMQ dead-lettered it (RFC 3339).
fn broker_time(headers: &FieldTable) -> Option<String> {
    match broker_death(headers)?.inner().get("time")? {
        AMQPValue::Timestamp(secs) => chrono::DateTime::from_timestamp(*secs as i64, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        _ => None,
    }
}

/// The routing key the message was first published with: the processor's
/// `x-original-routing-key`, or the first of RabbitMQ's `x-death` `routing-keys`.
fn original_routing_key(headers: &FieldTable) -> Option<String> {
    header_text(headers, "x-original-routing-key").or_else(|| {
        let AMQPValue::FieldArray(keys) = broker_death(headers)?.inner().get("routing-keys")?
        else {
            return None;
        };
        match keys.as_slice().first()? {
            AMQPValue::LongString(k) => Some(String::from_utf8_lossy(k.as_bytes()).into_owned()),
            AMQPValue::ShortString(k) => Some(k.to_string()),
            _ => None,
        }
    })
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let event_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string());
    DeadLetter {
        event_id,
        reason: header_text(&headers, DEAD_REASON_HEADER)
            .or_else(|| broker_reason(&headers))
            .unwrap_or_else(|| "unknown".into()),
        attempts: attempts(Some(&headers)),
        first_failure: header_text(&headers, FIRST_FAILURE_HEADER),
        dead_at: header_text(&headers, DEAD_AT_HEADER).or_else(|| broker_time(&headers)),
        payload: String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(64 * 1024)])
            .into_owned(),
    }
}

/// A confirm-mode channel on the dead-letter queue, and how many messages it holds.
async fn open(amqp_url: &str) -> anyhow::Result<(Connection, Channel, u32)> {
    let props = ConnectionProperties::default().with_connection_name("processor dlq".into());
    let connection = common::amqp::Brokers::parse(amqp_url)?
        .connect_any(props)
        .await
        .context("cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            DEAD_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue {DEAD_QUEUE} not found"))?;
    // Confirms: a copy put back, or a replay, is the broker's before its original goes.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel, queue.message_count()))
}

/// Messages waiting in the processor's queue and in the dead-letter queue (passive
/// declares on a short-lived connection; the console's overview).
pub async fn depths(amqp_url: &str) -> anyhow::Result<(u32, u32)> {
    let props = ConnectionProperties::default().with_connection_name("processor console".into());
    let connection = common::amqp::Brokers::parse(amqp_url)?
        .connect_any(props)
        .await
        .context("cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    let mut depth = [0u32; 2];
    for (i, queue) in [common::topology::PROCESSOR_QUEUE, DEAD_QUEUE]
        .into_iter()
        .enumerate()
    {
        depth[i] = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue {queue} not found"))?
            .message_count();
    }
    let _ = connection.close(200, "looked".into()).await;
    Ok((depth[0], depth[1]))
}

/// What to do with a dead letter once looked at.
enum After {
    /// It stays parked: put a copy back at the tail, then ack the original.
    Keep,
    /// It has been dealt with (replayed): ack it.
    Remove,
}

/// Publishes `body` with `properties` (confirmed) to `exchange` / `routing_key`.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> anyhow::Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    // The broker's answer in words: a returned message's body is not printed.
    let refused = match confirm {
        Confirmation::Ack(None) => return Ok(()),
        Confirmation::Ack(Some(returned)) => format!(
            "returned as unroutable ({} {})",
            returned.reply_code, returned.reply_text
        ),
        Confirmation::Nack(_) => "refused (nack)".to_owned(),
        Confirmation::NotRequested => "not confirmed".to_owned(),
    };
    anyhow::bail!("publish to {exchange:?} with routing key {routing_key:?} {refused}")
}

/// One pass: opens the dead-letter queue, takes up to as many messages as it holds (at
/// most [`MAX_BATCH`]) from its head, one at a time, settles each as `visit` decides
/// (given the pass's confirm-mode channel), never by a requeue (see the module notes),
/// and closes. Returns how many messages the queue held when the pass started.
async fn walk(
    amqp_url: &str,
    done: &str,
    mut visit: impl AsyncFnMut(&Channel, &Delivery) -> anyhow::Result<After>,
) -> anyhow::Result<u32> {
    let (connection, channel, held) = open(amqp_url).await?;
    for _ in 0..held.min(MAX_BATCH) {
        let Some(got) = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            // Fewer than counted (another reader took some): done.
            break;
        };
        let delivery = got.delivery;
        if let After::Keep = visit(&channel, &delivery).await? {
            publish_confirmed(
                &channel,
                "",
                DEAD_QUEUE,
                &delivery.data,
                delivery.properties.clone(),
            )
            .await?;
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = channel.close(200, done.into()).await;
    let _ = connection.close(200, done.into()).await;
    Ok(held)
}

/// Every dead letter (up to [`MAX_BATCH`]), oldest first. Nothing is removed.
pub async fn list(amqp_url: &str) -> anyhow::Result<Listing> {
    let mut letters = Vec::new();
    let held = walk(amqp_url, "listed", async |_: &Channel, d: &Delivery| {
        letters.push(describe(d));
        Ok(After::Keep)
    })
    .await?;
    Ok(Listing { held, letters })
}

impl Selection {
    fn chooses(&self, d: &Delivery) -> bool {
        let id = d.properties.message_id().as_ref().map(|m| m.as_str());
        match self {
            Selection::All => true,
            Selection::EventIds(ids) => id.is_some_and(|m| ids.contains(m)),
            Selection::EventId(wanted) => id == Some(wanted.as_str()),
        }
    }
}

/// Removes the selected dead letters without sending them anywhere (an operator gave up
/// on them after inspection: docs/OPERATIONS.md, DojoDeadLetters); the others stay, as
/// after a listing.
pub async fn discard(amqp_url: &str, selection: &Selection) -> anyhow::Result<Pass> {
    let mut chosen = 0u64;
    let held = walk(amqp_url, "discarded", async |_: &Channel, d: &Delivery| {
        if !selection.chooses(d) {
            return Ok(After::Keep);
        }
        chosen += 1;
        Ok(After::Remove)
    })
    .await?;
    Ok(Pass { held, chosen })
}

/// Publishes the selected dead letters back to the exchange (headers of the failure
/// removed but `x-first-failure-at`, so a replay that fails again still shows when it
/// first failed; original routing key restored) and removes each once confirmed.
pub async fn replay(amqp_url: &str, selection: &Selection) -> anyhow::Result<Pass> {
    let mut chosen = 0u64;
    let held = walk(
        amqp_url,
        "replayed",
        async |channel: &Channel, d: &Delivery| {
            if !selection.chooses(d) {
                return Ok(After::Keep);
            }
            let headers = d.properties.headers().clone().unwrap_or_default();
            let routing_key = original_routing_key(&headers).unwrap_or_else(|| "other".into());
            let mut clean = FieldTable::default();
            for (name, value) in headers.inner() {
                let failure = [
                    DEAD_REASON_HEADER,
                    DEAD_AT_HEADER,
                    ATTEMPT_HEADER,
                    LAST_ERROR_HEADER,
                    "x-death",
                    "x-original-routing-key",
                ];
                if !failure.contains(&name.as_str())
                    && !name.as_str().starts_with("x-first-death")
                    && !name.as_str().starts_with("x-last-death")
                {
                    clean.insert(name.clone(), value.clone());
                }
            }
            let properties = d.properties.clone().with_headers(clean);
            publish_confirmed(channel, EXCHANGE, &routing_key, &d.data, properties).await?;
            chosen += 1;
            Ok(After::Remove)
        },
    )
    .await?;
    Ok(Pass { held, chosen })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, ShortString};

    /// Headers as RabbitMQ writes them on a message it dead-lettered (a delivery limit
    /// passed): `x-death`, newest first, with the routing keys it was published with.
    fn broker_dead_lettered(at: u64) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert(
            ShortString::from("reason"),
            AMQPValue::LongString("delivery_limit".into()),
        );
        death.insert(ShortString::from("time"), AMQPValue::Timestamp(at));
        death.insert(
            ShortString::from("routing-keys"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                "payment_intent.created".into(),
            )])),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers
    }

    #[test]
    fn a_message_rabbitmq_dead_lettered_keeps_its_reason_time_and_routing_key() {
        let headers = broker_dead_lettered(1_764_770_400);
        assert_eq!(
            broker_reason(&headers).as_deref(),
            Some("dead-lettered by RabbitMQ: delivery_limit")
        );
        assert_eq!(
            broker_time(&headers).as_deref(),
            Some("2025-12-03T14:00:00Z")
        );
        assert_eq!(
            original_routing_key(&headers).as_deref(),
            Some("payment_intent.created")
        );
    }

    #[test]
    fn the_processors_own_routing_key_header_comes_first() {
        let mut headers = broker_dead_lettered(0);
        headers.insert(
            ShortString::from("x-original-routing-key"),
            AMQPValue::LongString("payment_intent.status_updated".into()),
        );
        assert_eq!(
            original_routing_key(&headers).as_deref(),
            Some("payment_intent.status_updated")
        );
        assert_eq!(original_routing_key(&FieldTable::default()), None);
    }
}
