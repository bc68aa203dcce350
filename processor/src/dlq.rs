//! `processor dlq list|replay`: what is parked in `dojo.events.dead`, and sending it back.
//!
//! Both read the queue with manual acks: `list` acks nothing (everything returns to the
//! queue when the channel closes); `replay` publishes each chosen message back to the
//! `dojo.events` exchange with confirms and acks its dead copy only then, so a message is
//! never lost and each dead copy is replayed once. Replaying an event the processor
//! already applied is harmless: it is deduplicated.

use crate::retry::{attempts, ATTEMPT_HEADER, FIRST_FAILURE_HEADER, LAST_ERROR_HEADER};
use anyhow::Context;
use common::topology::{DEAD_AT_HEADER, DEAD_QUEUE, DEAD_REASON_HEADER, EXCHANGE};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;
use std::time::Duration;

/// Most messages one command looks at (they are all held unacked meanwhile).
const MAX_BATCH: u32 = 10_000;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub event_id: Option<String>,
    pub reason: String,
    pub attempts: u32,
    pub first_failure: Option<String>,
    pub dead_at: Option<String>,
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    EventId(String),
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
    }
}

async fn open(amqp_url: &str) -> anyhow::Result<(Connection, Channel, u32)> {
    let props = ConnectionProperties::default().with_connection_name("processor dlq".into());
    let connection = Connection::connect(amqp_url, props)
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
    let count = queue.message_count().min(MAX_BATCH);
    channel
        .basic_qos(
            count.clamp(1, u32::from(u16::MAX)) as u16,
            BasicQosOptions::default(),
        )
        .await?;
    Ok((connection, channel, count))
}

/// Reads up to `count` deliveries from the dead-letter queue, giving each to `visit`.
async fn each(
    channel: &Channel,
    count: u32,
    mut visit: impl AsyncFnMut(Delivery) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut consumer = channel
        .basic_consume(
            DEAD_QUEUE.into(),
            "processor-dlq".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(delivery)) => visit(delivery?).await?,
            // Fewer than counted (another reader took some): done.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(())
}

/// Every dead letter (up to 10,000), oldest first. Nothing is removed.
pub async fn list(amqp_url: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let (connection, channel, count) = open(amqp_url).await?;
    let mut found = Vec::new();
    // Deliveries stay unacked and return to the queue when the channel closes.
    each(&channel, count, async |d: Delivery| {
        found.push(describe(&d));
        Ok(())
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
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut replayed = 0u64;
    each(&channel, count, async |d: Delivery| {
        let chosen = match selection {
            Selection::All => true,
            Selection::EventId(id) => d
                .properties
                .message_id()
                .as_ref()
                .is_some_and(|m| m.as_str() == id),
        };
        if !chosen {
            // Left unacked: back in the queue when the channel closes.
            return Ok(());
        }
        let mut headers = d.properties.headers().clone().unwrap_or_default();
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
        headers = clean;
        let confirm = channel
            .basic_publish(
                EXCHANGE.into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &d.data,
                d.properties.clone().with_headers(headers),
            )
            .await?
            .await?;
        anyhow::ensure!(
            matches!(confirm, Confirmation::Ack(None)),
            "replay not confirmed: {confirm:?}"
        );
        d.ack(BasicAckOptions::default()).await?;
        replayed += 1;
        Ok(())
    })
    .await?;
    let _ = channel.close(200, "replayed".into()).await;
    let _ = connection.close(200, "replayed".into()).await;
    Ok(replayed)
}
