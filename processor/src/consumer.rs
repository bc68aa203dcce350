//! Consuming `dojo.events.processor`: connection supervision, bounded parallel handling,
//! manual acks after the commit, and dead-lettering of what can never be processed.
//!
//! Deliveries belong to the channel they came on: when a connection dies, its unacked
//! deliveries are simply abandoned (RabbitMQ requeues them) and the new connection
//! starts afresh; nothing is ever acked across channels.

use crate::Worker;
use common::amqp::{self, Brokers};
use common::topology;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use rand::Rng;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Runs until `stop` turns true; reconnects with capped backoff whenever the broker goes.
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let brokers = match Brokers::parse(&worker.settings.amqp_url) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot consume");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut opened = 0u64;
    while !*stop.borrow() {
        let (redacted, connected) = connect(&worker, &brokers).await;
        match connected {
            Ok((connection, channels)) => {
                if opened > 0 {
                    worker.metrics.broker_reconnects.inc();
                }
                opened += 1;
                tracing::info!(broker = %redacted, queue = topology::PROCESSOR_QUEUE, "consuming");
                backoff = Duration::from_millis(100);
                consume(&worker, &channels, &mut stop).await;
                worker.consuming.store(false, Ordering::SeqCst);
                worker.metrics.consuming.set(0);
                // Each bounded: a node that stopped answering must not hold the reconnect up.
                let closing = async {
                    for channel in &channels {
                        let _ = channel.close(200, "processor stopping".into()).await;
                    }
                };
                let _ = tokio::time::timeout(amqp::CLOSE_TIMEOUT, closing).await;
                amqp::close(&connection, "processor stopping").await;
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(broker = %redacted, "broker connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(broker = %redacted, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot consume: {}", Brokers::explain(&e));
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

/// One attempt on the next node of `AMQP_URL`, its channels opened and the topology
/// declared within `common::amqp::SETUP_TIMEOUT`; the node's redacted URL comes back too.
async fn connect(
    worker: &Worker,
    brokers: &Brokers,
) -> (String, lapin::Result<(Connection, Vec<Channel>)>) {
    let props = ConnectionProperties::default().with_connection_name("processor".into());
    brokers
        .open(props, async |connection: &Connection| {
            open_channels(worker, connection).await
        })
        .await
}

async fn open_channels(worker: &Worker, connection: &Connection) -> lapin::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(worker.settings.channels);
    for i in 0..worker.settings.channels {
        let channel = connection.create_channel().await?;
        if i == 0 {
            topology::declare(&channel).await?;
            worker.settings.retry.declare(&channel).await?;
        }
        // Prefetch bounds the unacked deliveries held per channel: room for the batch
        // being committed and the next one.
        channel
            .basic_qos(worker.settings.prefetch, BasicQosOptions::default())
            .await?;
        // Confirms make dead-lettering and retries durable before the original is acked.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Consumes on every channel until one of them fails or `stop`; then all stop.
async fn consume(worker: &Arc<Worker>, channels: &[Channel], stop: &mut watch::Receiver<bool>) {
    let (halt, halted) = watch::channel(false);
    let mut loops = JoinSet::new();
    for (n, channel) in channels.iter().enumerate() {
        let (worker, channel, halted) = (worker.clone(), channel.clone(), halted.clone());
        loops.spawn(async move { consume_channel(&worker, &channel, n, halted).await });
    }
    worker.consuming.store(true, Ordering::SeqCst);
    worker.metrics.consuming.set(1);
    tokio::select! {
        _ = stop.changed() => {}
        _ = loops.join_next() => {}
    }
    // Every loop finishes its batch in flight, acks it, and returns.
    halt.send_replace(true);
    while loops.join_next().await.is_some() {}
}

/// One channel: batches of consecutive deliveries, each settled before the next, so a
/// `multiple` ack covers exactly one batch.
async fn consume_channel(
    worker: &Worker,
    channel: &Channel,
    n: usize,
    mut stop: watch::Receiver<bool>,
) {
    let tag = format!("processor-{}-{n}", std::process::id());
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
    // Deliveries that arrived while a batch was being processed.
    let mut waiting: VecDeque<Delivery> = VecDeque::new();
    loop {
        let first = match waiting.pop_front() {
            Some(delivery) => delivery,
            None => tokio::select! {
                _ = stop.changed() => {
                    // No new deliveries; unsettled ones return to the queue on close.
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    return;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "delivery stream failed");
                        return;
                    }
                    None => return,
                },
            },
        };
        // Whatever else is already here joins the batch: under load batches fill up,
        // at low rates an event is applied alone without waiting.
        let mut batch = vec![first];
        while batch.len() < worker.settings.batch {
            if let Some(delivery) = waiting.pop_front() {
                batch.push(delivery);
                continue;
            }
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                _ => break,
            }
        }
        // The broker may close this channel while the batch waits on the database
        // (consumer timeout, channel error): its deliveries are then requeued by the
        // broker and can never be acked here, so the batch is abandoned (its
        // transaction rolls back; a commit that made it is deduplicated on
        // redelivery) and the channel replaced at once, not when the wait ends.
        let processing = crate::batch::process(worker, channel, &batch, &stop);
        tokio::pin!(processing);
        loop {
            tokio::select! {
                _ = &mut processing => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => waiting.push_back(delivery),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "channel failed during a batch; abandoning the batch");
                        return;
                    }
                    None => {
                        tracing::warn!("channel closed during a batch; abandoning the batch");
                        return;
                    }
                },
            }
        }
    }
}
