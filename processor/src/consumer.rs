//! Consuming `dojo.events.processor`: connection supervision, bounded parallel handling,
//! manual acks after the commit, and dead-lettering of what can never be processed.
//!
//! Deliveries belong to the channel they came on: when a connection dies, its unacked
//! deliveries are simply abandoned (RabbitMQ requeues them) and the new connection
//! starts afresh; nothing is ever acked across channels.

use crate::handle::{handle, Verdict};
use crate::Worker;
use common::topology;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Runs until `stop` turns true; reconnects with capped backoff whenever the broker goes.
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let redacted = common::settings::redact_url(&worker.settings.amqp_url);
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        match connect(&worker).await {
            Ok((connection, channel)) => {
                tracing::info!(broker = %redacted, queue = topology::PROCESSOR_QUEUE, "consuming");
                backoff = Duration::from_millis(100);
                consume(&worker, &channel, &mut stop).await;
                worker.consuming.store(false, Ordering::SeqCst);
                let _ = channel.close(200, "processor stopping".into()).await;
                let _ = connection.close(200, "processor stopping".into()).await;
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(broker = %redacted, "broker connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(broker = %redacted, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot consume");
            }
        }
        let ms = backoff.as_millis().max(2) as u64;
        let pause = Duration::from_millis(rand::rng().random_range(ms / 2..=ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    tracing::info!("consumer stopped");
}

async fn connect(worker: &Worker) -> lapin::Result<(Connection, Channel)> {
    let props = ConnectionProperties::default().with_connection_name("processor".into());
    let connection = Connection::connect(&worker.settings.amqp_url, props).await?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel).await?;
    // Prefetch bounds the unacked deliveries in flight to this process.
    channel
        .basic_qos(worker.settings.prefetch, BasicQosOptions::default())
        .await?;
    // Confirms on this channel make dead-lettering durable before the original is acked.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

async fn consume(worker: &Arc<Worker>, channel: &Channel, stop: &mut watch::Receiver<bool>) {
    let tag = format!("processor-{}", std::process::id());
    let mut consumer = match channel
        .basic_consume(
            topology::PROCESSOR_QUEUE.into(),
            tag.as_str().into(),
            // Manual acks (no_ack false): a message is only gone once we acked it.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start consuming");
            return;
        }
    };
    worker.consuming.store(true, Ordering::SeqCst);
    let slots = Arc::new(Semaphore::new(worker.settings.concurrency));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => {
                // Stop new deliveries; what is in flight finishes below.
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                break;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let Ok(slot) = slots.clone().acquire_owned().await else { break };
                    let (worker, channel, stop) = (worker.clone(), channel.clone(), stop.clone());
                    tasks.spawn(async move {
                        settle(&worker, &channel, delivery, stop).await;
                        drop(slot);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "delivery stream failed");
                    break;
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Handles one delivery and settles it with the broker: ack, requeue, or dead-letter.
async fn settle(
    worker: &Worker,
    channel: &Channel,
    delivery: lapin::message::Delivery,
    stop: watch::Receiver<bool>,
) {
    let verdict = handle(
        worker,
        &delivery.data,
        delivery.properties.headers().as_ref(),
        stop,
    )
    .await;
    let acked = matches!(verdict, Verdict::Ack | Verdict::Dead(_));
    let settled = match verdict {
        Verdict::Ack => delivery.ack(BasicAckOptions::default()).await,
        Verdict::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Verdict::Dead(reason) => match dead_letter(channel, &delivery, &reason).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await,
            Err(e) => {
                tracing::error!(error = %e, reason, "cannot dead-letter; requeueing");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
        },
    };
    match settled {
        Ok(_) if acked => {
            worker.settled.fetch_add(1, Ordering::SeqCst);
        }
        Ok(_) => {}
        // The channel is gone: RabbitMQ redelivers the message; dedupe makes that harmless.
        Err(e) => tracing::warn!(error = %e, "could not settle a delivery; it will be redelivered"),
    }
}

/// Publishes a copy to the dead-letter queue with the reason, keeping the original
/// properties and headers, and waits for the confirm.
async fn dead_letter(
    channel: &Channel,
    delivery: &lapin::message::Delivery,
    reason: &str,
) -> Result<(), String> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        topology::DEAD_REASON_HEADER.into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        topology::DEAD_AT_HEADER.into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    headers.insert(
        "x-original-routing-key".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    let properties: BasicProperties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            topology::DEAD_QUEUE.into(),
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
        Confirmation::Ack(None) => {
            tracing::warn!(reason, "message dead-lettered");
            Ok(())
        }
        other => Err(format!("dead-letter publish not confirmed: {other:?}")),
    }
}
