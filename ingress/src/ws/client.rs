//! The POS's socket to Dojo. One connection at a time; requests on it are handled
//! concurrently (at most `max_in_flight`), and replies go out in whatever order they
//! complete. A ping every `ping_interval`; no frame at all for three intervals means the
//! peer is dead. Reconnects back off exponentially (capped, jittered). On shutdown, no
//! new request is read, in-flight replies are sent, then the socket is closed cleanly.

use crate::accept::Intake;
use crate::settings::WsSettings;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Handle on the running client.
pub struct WsClient {
    connected: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WsClient {
    /// Starts connecting in the background (on the current Tokio runtime).
    pub fn start(settings: WsSettings, intake: Intake) -> Self {
        let connected = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(settings, intake, connected.clone(), stopped));
        Self {
            connected,
            stop,
            task,
        }
    }

    /// True while the socket to Dojo is open.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The flag behind [`WsClient::is_connected`], for readiness checks.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Stops reading, sends the replies still in flight, closes the socket.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn connect(settings: &WsSettings) -> anyhow::Result<Socket> {
    let mut request = settings.url.as_str().into_client_request()?;
    let headers = request.headers_mut();
    // Dojo wants the key itself after "Basic", not base64 of anything.
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {}", settings.api_key.expose()))?,
    );
    if let Some(id) = &settings.software_house_id {
        headers.insert("software-house-id", HeaderValue::from_str(id)?);
    }
    if let Some(id) = &settings.reseller_id {
        headers.insert("reseller-id", HeaderValue::from_str(id)?);
    }
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| anyhow::anyhow!("handshake timed out"))??;
    Ok(socket)
}

async fn supervise(
    settings: WsSettings,
    intake: Intake,
    connected: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut opened = 0u64;
    while !*stop.borrow() {
        match connect(&settings).await {
            Ok(socket) => {
                tracing::info!(url = %settings.url, "WebSocket to Dojo open");
                connected.store(true, Ordering::SeqCst);
                intake.metrics.websocket_connected.set(1);
                if opened > 0 {
                    intake.metrics.websocket_reconnects.inc();
                }
                opened += 1;
                backoff = Duration::from_millis(100);
                serve(socket, &settings, &intake, &mut stop).await;
                connected.store(false, Ordering::SeqCst);
                intake.metrics.websocket_connected.set(0);
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(url = %settings.url, "WebSocket to Dojo lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(url = %settings.url, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot open the WebSocket to Dojo");
            }
        }
        let ms = backoff.as_millis().max(2) as u64;
        let pause = Duration::from_millis(rand::rng().random_range(ms / 2..=ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(settings.reconnect_max);
    }
    tracing::info!("WebSocket client stopped");
}

/// Serves one connection until it fails, the peer goes quiet or closes, or stop.
async fn serve(
    socket: Socket,
    settings: &WsSettings,
    intake: &Intake,
    stop: &mut watch::Receiver<bool>,
) {
    let (mut sink, mut source) = socket.split();
    let (outbox, mut queue) = mpsc::channel::<Message>(settings.max_in_flight + 8);
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut requests = JoinSet::new();
    let mut ping = tokio::time::interval(settings.ping_interval);
    let mut last_seen = Instant::now();
    let mut graceful = false;
    loop {
        tokio::select! {
            frame = source.next() => {
                last_seen = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue, // ping, pong: liveness only
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "WebSocket read failed");
                        break;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let (intake, outbox) = (intake.clone(), outbox.clone());
                requests.spawn(async move {
                    if let Some(reply) = super::rpc::handle(&intake, &text).await {
                        let _ = outbox.send(Message::Text(reply.into())).await;
                    }
                    drop(slot);
                });
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > settings.ping_interval * 3 {
                    tracing::warn!(silent_for_ms = last_seen.elapsed().as_millis() as u64, "Dojo stopped answering; dropping the socket");
                    break;
                }
                let _ = outbox.try_send(Message::Ping(Vec::new().into()));
            }
            _ = stop.changed() => {
                graceful = true;
                break;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    // Replies of requests already read still go out (on a live socket) before closing.
    while requests.join_next().await.is_some() {}
    if graceful {
        let _ = outbox
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "POS shutting down".into(),
            })))
            .await;
    }
    drop(outbox);
    if graceful {
        let _ = writer.await;
    } else {
        writer.abort();
    }
}
