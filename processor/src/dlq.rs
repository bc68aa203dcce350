//! `processor dlq list|replay`: what is parked in `dojo.events.dead`, and sending it back.
//!
//! Both walk the queue from its head with `basic.get`, one message at a time, at most
//! as many as it held when the command started. A message that stays (every one for
//! `list`, the unchosen ones for `replay`) is put back at the tail as a fresh copy,
//! confirmed, and only then is the original acked: after a full pass the queue holds
//! the same messages in the same order. It is never handed back with a requeue (nack,
//! or a channel closed with it unacked): on a quorum queue that counts as a delivery,
//! and RabbitMQ 4 drops a message past its delivery limit (20 by default), so looking
//! at the dead letters 20 times would lose them. A crash between the copy and the ack
//! can leave one message twice; replaying both is harmless. `replay` publishes each
//! chosen message back to the `dojo.events` exchange with confirms and acks its dead copy
//! only then, so a message is never lost and each dead copy is replayed once.
//! Replaying an event the processor already applied is harmless: it is deduplicated.

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

/// Most messages one command looks at.
const MAX_BATCH: u32 = 10_000;

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

/// The reason RabbitMQ itself gives (`x-death`), for messages it dead-lettered.
fn broker_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    header_text(first, "reason").map(|r| format!("dead-lettered by RabbitMQ: {r}"))
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
        dead_at: header_text(&headers, DEAD_AT_HEADER),
        payload: String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(64 * 1024)])
            .into_owned(),
    }
}

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
    Ok((connection, channel, queue.message_count().min(MAX_BATCH)))
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
    anyhow::ensure!(
        matches!(confirm, Confirmation::Ack(None)),
        "publish to {exchange:?}/{routing_key} not confirmed: {confirm:?}"
    );
    Ok(())
}

/// Takes up to `count` messages from the head of the dead-letter queue, one at a time,
/// and settles each as `visit` decides, never by a requeue (see the module notes).
async fn each(
    channel: &Channel,
    count: u32,
    mut visit: impl AsyncFnMut(&Delivery) -> anyhow::Result<After>,
) -> anyhow::Result<()> {
    for _ in 0..count {
        let Some(got) = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            // Fewer than counted (another reader took some): done.
            break;
        };
        let delivery = got.delivery;
        if let After::Keep = visit(&delivery).await? {
            publish_confirmed(
                channel,
                "",
                DEAD_QUEUE,
                &delivery.data,
                delivery.properties.clone(),
            )
            .await?;
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Every dead letter (up to 10,000), oldest first. Nothing is removed.
pub async fn list(amqp_url: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let (connection, channel, count) = open(amqp_url).await?;
    let mut found = Vec::new();
    each(&channel, count, async |d: &Delivery| {
        found.push(describe(d));
        Ok(After::Keep)
    })
    .await?;
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    Ok(found)
}

/// Publishes the selected dead letters back to the exchange (headers of the failure
/// removed, original routing key restored) and removes each once confirmed. Returns how
/// many were replayed.
pub async fn replay(amqp_url: &str, selection: &Selection) -> anyhow::Result<u64> {
    let (connection, channel, count) = open(amqp_url).await?;
    let mut replayed = 0u64;
    each(&channel, count, async |d: &Delivery| {
        let chosen = match selection {
            Selection::All => true,
            Selection::EventIds(ids) => d
                .properties
                .message_id()
                .as_ref()
                .is_some_and(|m| ids.contains(m.as_str())),
            Selection::EventId(id) => d
                .properties
                .message_id()
                .as_ref()
                .is_some_and(|m| m.as_str() == id),
        };
        if !chosen {
            return Ok(After::Keep);
        }
        let headers = d.properties.headers().clone().unwrap_or_default();
        let routing_key =
            header_text(&headers, "x-original-routing-key").unwrap_or_else(|| "other".into());
        let mut clean = FieldTable::default();
        for (name, value) in headers.inner() {
            let failure = [
                DEAD_REASON_HEADER,
                DEAD_AT_HEADER,
                ATTEMPT_HEADER,
                FIRST_FAILURE_HEADER,
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
        publish_confirmed(&channel, EXCHANGE, &routing_key, &d.data, properties).await?;
        replayed += 1;
        Ok(After::Remove)
    })
    .await?;
    let _ = channel.close(200, "replayed".into()).await;
    let _ = connection.close(200, "replayed".into()).await;
    Ok(replayed)
}
