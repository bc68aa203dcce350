//! The machine's limits, measured with the same crates the services use but none of
//! their logic: what RabbitMQ, PostgreSQL and Redis can do here, now.

use crate::stats::{histogram, percentiles, record};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Rate {
    pub per_second: f64,
    pub detail: String,
}

async fn quorum_queue(channel: &Channel, name: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// How a baseline publish is shaped.
#[derive(Clone, Copy)]
pub enum Shape {
    /// What the issue measured: 300 bytes, default exchange, no headers.
    Raw,
    /// What ingress sends: an envelope-sized body through a fanout exchange, mandatory,
    /// with a message id and a `traceparent` header.
    LikeIngress,
}

/// `publishers` tasks share one confirm-mode channel, each awaiting its own confirm
/// before its next publish: persistent messages into a quorum queue.
pub async fn confirmed_publish(
    amqp: &str,
    publishers: usize,
    count: usize,
    shape: Shape,
) -> anyhow::Result<Rate> {
    let conn = Connection::connect(amqp, Default::default()).await?;
    let channel = conn.create_channel().await?;
    quorum_queue(&channel, "bench.publish").await?;
    let (exchange, key, size, mandatory) = match shape {
        Shape::Raw => ("", "bench.publish", 300, false),
        Shape::LikeIngress => {
            // Like ingress's exchange (fanout); BENCH_EXCHANGE=topic|direct to compare.
            let kind = match std::env::var("BENCH_EXCHANGE").as_deref() {
                Ok("direct") => lapin::ExchangeKind::Direct,
                Ok("topic") => lapin::ExchangeKind::Topic,
                _ => lapin::ExchangeKind::Fanout,
            };
            let binding = if matches!(kind, lapin::ExchangeKind::Topic) {
                "#"
            } else {
                "payment_intent.created"
            };
            channel
                .exchange_declare(
                    "bench.topic".into(),
                    kind,
                    Default::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    "bench.publish".into(),
                    "bench.topic".into(),
                    binding.into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await?;
            ("bench.topic", "payment_intent.created", 520, true)
        }
    };
    let properties = match shape {
        Shape::Raw => BasicProperties::default().with_delivery_mode(2),
        Shape::LikeIngress => {
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
            );
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id("evt_0123456789abcdefghij".into())
                .with_headers(headers)
        }
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = Arc::new(vec![b'x'; size]);
    let latencies = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let per = count / publishers;
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let (channel, body, latencies, properties) = (
                channel.clone(),
                body.clone(),
                latencies.clone(),
                properties.clone(),
            );
            tokio::spawn(async move {
                let mut local = histogram();
                for _ in 0..per {
                    let t = Instant::now();
                    let confirm = channel
                        .basic_publish(
                            exchange.into(),
                            key.into(),
                            BasicPublishOptions {
                                mandatory,
                                ..Default::default()
                            },
                            &body,
                            properties.clone(),
                        )
                        .await?
                        .await?;
                    anyhow::ensure!(
                        confirm.is_ack() && confirm.take_message().is_none(),
                        "not confirmed"
                    );
                    record(&mut local, t.elapsed());
                }
                latencies.lock().unwrap().add(&local).ok();
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    channel
        .queue_delete("bench.publish".into(), Default::default())
        .await?;
    if let Shape::LikeIngress = shape {
        channel
            .exchange_delete("bench.topic".into(), Default::default())
            .await?;
    }
    let _ = conn.close(200, "done".into()).await;
    let h = latencies.lock().unwrap();
    Ok(Rate {
        per_second: (per * publishers) as f64 / elapsed.as_secs_f64(),
        detail: format!(
            "{publishers} publishers, one channel, confirm {}",
            percentiles(&h)
        ),
    })
}

/// Consume-and-ack from a quorum queue (prefetch 256, one consumer, one ack each).
pub async fn consume_ack(amqp: &str, count: usize) -> anyhow::Result<Rate> {
    let conn = Connection::connect(amqp, Default::default()).await?;
    let channel = conn.create_channel().await?;
    quorum_queue(&channel, "bench.consume").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; 300];
    for _ in 0..count {
        let confirm = channel
            .basic_publish(
                "".into(),
                "bench.consume".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        drop(confirm);
    }
    channel.wait_for_confirms().await?;
    let consumer_channel = conn.create_channel().await?;
    consumer_channel
        .basic_qos(256, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            "bench.consume".into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    channel
        .queue_delete("bench.consume".into(), Default::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(Rate {
        per_second: count as f64 / elapsed.as_secs_f64(),
        detail: "prefetch 256, one consumer, ack each".into(),
    })
}

/// The payment tables written raw: per transaction, 100 events as one multi-row event
/// insert plus one multi-row intent upsert; `clients` connections in parallel.
pub async fn batched_postgres(url: &str, clients: usize, count: usize) -> anyhow::Result<Rate> {
    let pool =
        processor::db::connect_and_migrate(url, clients as u32, processor::db::Timeouts::default())
            .await?;
    let per_tx = 100;
    let transactions = count / per_tx;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut n = c;
                while n < transactions {
                    let ids: Vec<String> = (0..per_tx).map(|i| format!("bench_{n}_{i}")).collect();
                    let now = chrono::Utc::now();
                    let mut tx = pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO dojo_events (account_id, event_id, event_type, payment_intent_id, payment_status,
                             capture_mode, created_at, received_at, channel, outcome, payload)
                         SELECT 'acc', id, 'payment_intent.created', id, 'Created', 'Auto', $2, $2, 'webhook', 'applied', '{}'::jsonb
                         FROM unnest($1::text[]) AS id ON CONFLICT DO NOTHING",
                    )
                    .bind(&ids)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO payment_intents (payment_intent_id, account_id, status, capture_mode,
                             status_changed_at, status_changed_ns, status_stage, last_event_id)
                         SELECT id, 'acc', 'Created', 'Auto', $2, 0, 1, id FROM unnest($1::text[]) AS id
                         ON CONFLICT (payment_intent_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()",
                    )
                    .bind(&ids)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    n += clients;
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    pool.close().await;
    Ok(Rate {
        per_second: (transactions * per_tx) as f64 / elapsed.as_secs_f64(),
        detail: format!("{clients} clients, {per_tx} events per transaction, multi-row"),
    })
}

/// `SET key v NX EX ttl` claims, pipelined 256 at a time on `connections` connections.
pub async fn redis_claims(url: &str, connections: usize, count: usize) -> anyhow::Result<Rate> {
    let client = redis::Client::open(url)?;
    let per = count / connections;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let mut n = 0;
                while n < per {
                    let mut pipe = redis::pipe();
                    for i in n..(n + 256).min(per) {
                        pipe.cmd("SET")
                            .arg(format!("bench:{c}:{i}"))
                            .arg("p")
                            .arg("NX")
                            .arg("EX")
                            .arg(60)
                            .ignore();
                    }
                    let () = pipe.query_async(&mut conn).await?;
                    n += 256;
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(Rate {
        per_second: (per * connections) as f64 / started.elapsed().as_secs_f64(),
        detail: format!("pipelined 256, {connections} connections"),
    })
}
