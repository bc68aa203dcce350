//! Consuming `dojo.events.processor`: connection supervision, bounded parallel handling,
//! manual acks after the commit, and dead-lettering of what can never be processed.
//!
//! Deliveries belong to the channel they came on: when a connection dies, its unacked
//! deliveries are simply abandoned (RabbitMQ requeues them) and the new connection
//! starts afresh; nothing is ever acked across channels.

use crate::Worker;
use common::topology;
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
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
    let mut opened = 0u64;
    while !*stop.borrow() {
        match connect(&worker).await {
            Ok((connection, channel)) => {
                if opened > 0 {
                    worker.metrics.broker_reconnects.inc();
                }
                opened += 1;
                tracing::info!(broker = %redacted, queue = topology::PROCESSOR_QUEUE, "consuming");
                backoff = Duration::from_millis(100);
                consume(&worker, &channel, &mut stop).await;
                worker.consuming.store(false, Ordering::SeqCst);
                worker.metrics.consuming.set(0);
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
    worker.settings.retry.declare(&channel).await?;
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
    worker.metrics.consuming.set(1);
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
                        crate::settle::settle(&worker, &channel, delivery, stop).await;
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
