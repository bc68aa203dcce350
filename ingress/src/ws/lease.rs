//! Which ingress replica holds the WebSockets to Dojo: each location's socket must be
//! open on exactly one replica at a time (Dojo sends a location's requests over the
//! socket it chooses; two sockets for one key would split and duplicate work).
//!
//! The lease is a RabbitMQ **exclusive queue**, `dojo.ingress.websocket.lease`, on a
//! connection of its own: the broker lets one connection at a time declare it (others
//! get `RESOURCE_LOCKED`) and deletes it when that connection closes. So the holder is
//! the replica whose declare succeeded, and it holds the lease for as long as that
//! connection lives; the others retry every `INGRESS_WS_LEASE_RETRY_MS`. A replica that
//! dies loses its connection at once (its TCP socket is closed by the kernel), or after
//! the AMQP heartbeat when its machine vanishes.
//!
//! A holder that loses the broker keeps its sockets for up to `INGRESS_WS_LEASE_GRACE_MS`
//! while it reconnects and declares the queue again: during a broker outage nobody can
//! take the lease, and Dojo keeps getting `UnexpectedError` replies (retry later) rather
//! than a closed socket. If the declare is refused (another replica took the lease) or
//! the grace runs out, its sockets close. Two replicas can thus hold sockets at once
//! only while one of them is cut off from the broker, for at most the grace.

use crate::metrics::Metrics;
use common::amqp::{self, Brokers};
use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, Event};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The exclusive queue whose declarer holds the sockets.
pub const LEASE_QUEUE: &str = "dojo.ingress.websocket.lease";

/// Keeps trying to hold the lease until `stop`; `held` says whether this replica holds it.
pub async fn hold(
    url: String,
    retry: Duration,
    grace: Duration,
    held: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(brokers) = Brokers::parse(&url) else {
        return;
    };
    let redacted = brokers.redacted();
    let mut connection: Option<Connection> = None;
    // While holding sockets without a live lease: until when they may stay open.
    let mut grace_until: Option<Instant> = None;
    while !*stop.borrow() {
        if connection.as_ref().is_none_or(|c| !c.status().connected()) {
            let props = ConnectionProperties::default()
                .with_connection_name("ingress websocket lease".into());
            connection = brokers.connect_any(props).await.ok();
        }
        if let Some(conn) = &connection {
            if try_declare(conn).await {
                if grace_until.take().is_none() {
                    // Held with or without WebSocket locations: a reloaded file may add one.
                    tracing::info!(broker = %redacted, "holding the WebSocket lease: this replica opens the sockets of the locations with websocket = true");
                }
                set(&held, &metrics, true);
                wait_until_lost(conn, &mut stop).await;
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "WebSocket lease connection lost; keeping the sockets while reconnecting"
                );
                grace_until = Some(Instant::now() + grace);
                connection = None;
                continue;
            }
            if grace_until.take().is_some() {
                tracing::warn!(
                    "another replica holds the WebSocket lease now; closing this replica's sockets"
                );
                set(&held, &metrics, false);
            }
        }
        if grace_until.is_some_and(|t| Instant::now() >= t) {
            tracing::warn!(
                "WebSocket lease not regained within its grace; closing this replica's sockets"
            );
            grace_until = None;
            set(&held, &metrics, false);
        }
        let pause = if grace_until.is_some() {
            retry.min(Duration::from_millis(250))
        } else {
            retry
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    set(&held, &metrics, false);
    if let Some(conn) = connection {
        // Closing the connection deletes the queue: another replica takes over at once.
        amqp::close(&conn, "ingress shutting down").await;
    }
}

fn set(held: &watch::Sender<bool>, metrics: &Metrics, value: bool) {
    held.send_replace(value);
    metrics.websocket_lease_held.set(i64::from(value));
}

/// Declares the exclusive queue on a fresh channel (a refusal closes the channel); a
/// broker that does not answer within `common::amqp::SETUP_TIMEOUT` counts as a refusal.
async fn try_declare(conn: &Connection) -> bool {
    amqp::setup(declare_lease(conn)).await.is_ok()
}

async fn declare_lease(conn: &Connection) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    let options = QueueDeclareOptions {
        // Exclusive: one connection at a time; deleted with it. Nothing is ever
        // published to it, so neither durability nor a queue type matters.
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(LEASE_QUEUE.into(), options, FieldTable::default())
        .await
        .map(drop)
}

/// Returns when the connection (and so the lease) is gone, or on stop.
async fn wait_until_lost(conn: &Connection, stop: &mut watch::Receiver<bool>) {
    let mut events = conn.events_listener().boxed();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(_)) | None => return,
                Some(_) => {}
            },
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !conn.status().connected() {
            return;
        }
    }
}
