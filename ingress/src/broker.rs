//! The confirmed publish path to RabbitMQ, and the supervisor that keeps it connected.
//!
//! One connection, a small fixed pool of confirm-mode channels shared by every request:
//! each publish awaits only its own confirm, so requests never queue behind each other's
//! confirms, and no request opens a channel. When the connection breaks, the supervisor
//! drops the pool (readiness goes false, publishes fail fast with 503) and reconnects
//! with capped exponential backoff and jitter, without a restart.
//!
//! Two states of a connection that looks healthy also mean "cannot publish now":
//! - RabbitMQ blocked it (`connection.blocked`: a memory or disk alarm): publishes are
//!   refused at once (503, no wait for a confirm that cannot come) and readiness is
//!   false until `connection.unblocked`;
//! - its publishes keep failing ([`FAILING_AFTER`] in a row: nacks, missing confirms,
//!   channel errors), whatever the broker's reason: readiness is false and the
//!   supervisor replaces the connection and its channels.

use common::amqp::{self, Brokers};
use common::topology;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use rand::Rng;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Why an event was not confirmed. Every variant means "nothing was acknowledged".
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker not connected")]
    NotConnected,
    #[error("broker blocked publishing (resource alarm): {0}")]
    Blocked(String),
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("broker returned the message as unroutable: {0}")]
    Returned(String),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// What to publish: the body plus the properties downstream relies on.
pub struct Outgoing<'a> {
    pub body: &'a [u8],
    pub message_id: &'a str,
    pub routing_key: &'a str,
    pub traceparent: &'a str,
}

/// Publishes failing in a row, on a connection that looks healthy, after which it is
/// treated as broken: not ready, and replaced.
pub const FAILING_AFTER: u32 = 3;

struct Live {
    connection: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// Publishes failed in a row on this connection (reset by a success).
    failures: AtomicU32,
}

impl Live {
    /// The connection and every channel are open, and publishes are not failing.
    fn healthy(&self) -> bool {
        self.connection.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
            && self.failures.load(Ordering::SeqCst) < FAILING_AFTER
    }

    /// Healthy and not blocked by a resource alarm: a publish can be confirmed now.
    fn can_publish(&self) -> bool {
        self.healthy() && !self.connection.status().blocked()
    }
}

struct Shared {
    live: RwLock<Option<Arc<Live>>>,
    /// What the supervisor is doing while not connected (for readiness).
    doing: RwLock<String>,
    /// Poked by a failed publish so the supervisor checks the connection at once.
    suspect: Notify,
    stop: watch::Sender<bool>,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    timeout: Duration,
}

pub struct PublisherConfig {
    pub url: String,
    pub channels: usize,
    pub confirm_timeout: Duration,
    pub reconnect_max: Duration,
}

impl Publisher {
    /// Starts the supervisor (on the current Tokio runtime) and returns at once; the
    /// publisher is ready when [`Publisher::is_ready`] says so.
    pub fn start(config: PublisherConfig) -> Self {
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            live: RwLock::new(None),
            doing: RwLock::new("starting".into()),
            suspect: Notify::new(),
            stop,
        });
        tokio::spawn(supervise(
            shared.clone(),
            config.url,
            config.channels,
            config.reconnect_max,
        ));
        Self {
            shared,
            timeout: config.confirm_timeout,
        }
    }

    /// True while events can be durably accepted: connected, not blocked by the
    /// broker, publishes not failing.
    pub fn is_ready(&self) -> bool {
        self.live().is_some_and(|l| l.can_publish())
    }

    /// Why [`Publisher::is_ready`] is false, for the readiness body.
    pub fn state(&self) -> &'static str {
        match self.live() {
            None => "disconnected",
            Some(l) if l.connection.status().blocked() => "blocked",
            Some(l) if !l.healthy() => "failing",
            Some(_) => "connected",
        }
    }

    /// While not connected: what the supervisor is doing or last saw (an attempt in
    /// progress, the last attempt's error with the node tried, passwords masked), for
    /// the readiness body; `None` while connected.
    pub fn detail(&self) -> Option<String> {
        match self.live() {
            Some(_) => None,
            None => Some(self.shared.doing.read().expect("lock").clone()),
        }
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.shared.live.read().expect("lock").clone()
    }

    /// Publishes one persistent, mandatory message and waits (bounded) for the broker's
    /// confirm. `Ok` means RabbitMQ has taken responsibility for the message.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::NotConnected)?;
        if live.connection.status().blocked() {
            return Err(PublishError::Blocked(
                "connection.blocked received; waiting for connection.unblocked".into(),
            ));
        }
        let n = live.next.fetch_add(1, Ordering::Relaxed) % live.channels.len();
        let channel = &live.channels[n];
        let mut headers = FieldTable::default();
        headers.insert(
            topology::TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(msg.traceparent.into()),
        );
        let properties = BasicProperties::default()
            // 2 = persistent: written to disk (quorum queues always are) before the confirm.
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(msg.message_id.into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers);
        let confirmed = async {
            channel
                .basic_publish(
                    topology::EXCHANGE.into(),
                    msg.routing_key.into(),
                    // mandatory: an unroutable message comes back instead of vanishing.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    msg.body,
                    properties,
                )
                .await?
                .await
        };
        let result = match tokio::time::timeout(self.timeout, confirmed).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(PublishError::Broker(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                Err(PublishError::Returned(returned.reply_text.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        };
        match &result {
            Ok(()) => live.failures.store(0, Ordering::SeqCst),
            Err(_) => {
                live.failures.fetch_add(1, Ordering::SeqCst);
                self.shared.suspect.notify_one();
            }
        }
        result
    }

    /// Stops reconnecting and closes the connection (after in-flight publishes are done).
    pub async fn close(&self) {
        self.shared.stop.send_replace(true);
        let live = self.shared.live.write().expect("lock").take();
        if let Some(live) = live {
            amqp::close(&live.connection, "ingress shutting down").await;
        }
    }
}

/// One attempt on the next node: connect, then open the confirm-mode channel pool (the
/// first channel declares the topology), all bounded (`common::amqp::SETUP_TIMEOUT`).
async fn connect(brokers: &Brokers, channels: usize) -> (String, lapin::Result<Live>) {
    let props = ConnectionProperties::default().with_connection_name("ingress".into());
    let (node, opened) = brokers
        .open(props, async |connection: &Connection| {
            open_channels(connection, channels).await
        })
        .await;
    let live = opened.map(|(connection, channels)| Live {
        connection,
        channels,
        next: AtomicUsize::new(0),
        failures: AtomicU32::new(0),
    });
    (node, live)
}

async fn open_channels(connection: &Connection, channels: usize) -> lapin::Result<Vec<Channel>> {
    let mut pool = Vec::with_capacity(channels);
    for i in 0..channels {
        let channel = connection.create_channel().await?;
        if i == 0 {
            topology::declare(&channel).await?;
        }
        // Publisher confirms: the broker tells us when it has taken the message.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        pool.push(channel);
    }
    Ok(pool)
}

/// Backoff with full jitter over the upper half: `[d/2, d]`.
fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

async fn supervise(shared: Arc<Shared>, url: String, channels: usize, max: Duration) {
    let brokers = match Brokers::parse(&url) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot connect to the broker");
            return;
        }
    };
    let mut stop = shared.stop.subscribe();
    let mut backoff = Duration::from_millis(100);
    let doing = |what: String| *shared.doing.write().expect("lock") = what;
    // The last failed attempt, shown while the next one runs.
    let mut last: Option<String> = None;
    while !*stop.borrow() {
        doing(match &last {
            None => "connecting".into(),
            Some(failed) => format!("connecting again; the last attempt: {failed}"),
        });
        let (redacted, connected) = connect(&brokers, channels).await;
        match connected {
            Ok(live) => {
                tracing::info!(broker = %redacted, channels, "connected to the broker");
                backoff = Duration::from_millis(100);
                last = None;
                let live = Arc::new(live);
                *shared.live.write().expect("lock") = Some(live.clone());
                watch_until_broken(&shared, &live, &mut stop).await;
                shared.live.write().expect("lock").take();
                if *stop.borrow() {
                    return;
                }
                tracing::warn!(broker = %redacted, "broker connection lost; not ready until reconnected");
                doing(format!("closing the lost connection to {redacted}"));
                amqp::close(&live.connection, "reconnecting").await;
                doing(format!("connection to {redacted} lost; reconnecting"));
            }
            Err(e) => {
                let failed = format!("{redacted}: {e}");
                doing(failed.clone());
                last = Some(failed);
                tracing::warn!(broker = %redacted, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to the broker: {}", Brokers::explain(&e));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Returns when the connection or one of its channels is no longer usable, or on stop.
async fn watch_until_broken(shared: &Shared, live: &Live, stop: &mut watch::Receiver<bool>) {
    let mut events = live.connection.events_listener().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(e)) => {
                    tracing::warn!(error = %e, "broker connection error");
                    return;
                }
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(reason, "broker blocked publishing; not ready until unblocked");
                }
                Some(Event::ConnectionUnblocked) => {
                    tracing::info!("broker unblocked publishing");
                }
                None => return,
                Some(_) => {}
            },
            _ = shared.suspect.notified() => {}
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !live.healthy() {
            if live.failures.load(Ordering::SeqCst) >= FAILING_AFTER {
                tracing::warn!(
                    failures = FAILING_AFTER,
                    "publishes keep failing on a connection that looks healthy; replacing it"
                );
            }
            return;
        }
    }
}
