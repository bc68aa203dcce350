//! One location's socket to Dojo. One connection at a time; requests on it are handled
//! concurrently (at most `max_in_flight`), and replies go out in whatever order they
//! complete. A ping every `ping_interval`; no frame at all for three intervals means the
//! peer is dead. Every handshake first takes a permit from the replica's shared
//! [`Handshakes`] cap, so a Dojo-wide outage ends without a reconnect storm.
//!
//! Reconnects back off exponentially (capped, jittered). The backoff starts again from
//! the beginning only after a socket stayed open for `stable_after`: a peer that accepts
//! and closes at once (or answers close 1012/1013, "try again later") is backed off from,
//! not hammered. Messages and frames over [`MAX_MESSAGE`] are refused by the socket
//! itself before they are buffered (close 1009). On shutdown, no new request is read,
//! in-flight replies are sent, then the socket is closed cleanly (1001).

use super::handshakes::Handshakes;
use super::rpc::Incoming;
use crate::accept::{Intake, MAX_EVENT};
use crate::settings::WsSettings;
use common::locations::Location;
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
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::Instrument;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest JSON-RPC message read from Dojo: an event of [`MAX_EVENT`] plus room for the
/// JSON-RPC envelope and `params.headers`. Larger ones close the socket (1009) before
/// they are buffered.
pub const MAX_MESSAGE: usize = MAX_EVENT + 16 * 1024;
/// First reconnect delay.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Floor of the delay after Dojo closed with 1012 (restart) or 1013 (try again later).
const TRY_AGAIN_LATER: Duration = Duration::from_secs(1);

/// Socket buffers sized for many idle sockets: events are small, and a socket per
/// location is the point.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Handle on one location's running client.
pub struct WsClient {
    connected: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What one client needs; shared by every location's client of a replica.
#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<WsSettings>,
    pub intake: Intake,
    pub handshakes: Handshakes,
}

impl WsClient {
    /// Starts connecting in the background (on the current Tokio runtime).
    pub fn start(location: Arc<Location>, shared: Shared) -> Self {
        let connected = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("websocket", location = %location.id);
        let task =
            tokio::spawn(supervise(location, shared, connected.clone(), stopped).instrument(span));
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

    /// The flag behind [`WsClient::is_connected`].
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Stops reading, sends the replies still in flight, closes the socket.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn connect(location: &Location, settings: &WsSettings) -> anyhow::Result<Socket> {
    let key = location
        .api_key()
        .ok_or_else(|| anyhow::anyhow!("location has no API key"))?;
    let mut request = settings.url.as_str().into_client_request()?;
    let headers = request.headers_mut();
    // Dojo wants the key itself after "Basic", not base64 of anything.
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {}", key.expose()))?,
    );
    if let Some(id) = &settings.software_house_id {
        headers.insert("software-house-id", HeaderValue::from_str(id)?);
    }
    if let Some(id) = &settings.reseller_id {
        headers.insert("reseller-id", HeaderValue::from_str(id)?);
    }
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), true),
    )
    .await
    .map_err(|_| anyhow::anyhow!("handshake timed out"))??;
    Ok(socket)
}

/// Dojo's "restarting" (1012) or "try again later" (1013) close (RFC 6455 §7.4.1,
/// IANA's close code registry).
fn try_again_later(close: Option<u16>) -> bool {
    matches!(close, Some(1012 | 1013))
}

/// The next backoff after a session of `lasted` that ended with `close` (None: no
/// session, the handshake failed). A session that stayed open `stable_after` starts the
/// backoff again: from [`BACKOFF_START`], or from [`TRY_AGAIN_LATER`] after a 1012/1013.
fn next_backoff(
    backoff: Duration,
    lasted: Option<Duration>,
    close: Option<u16>,
    settings: &WsSettings,
) -> Duration {
    let stable = matches!(lasted, Some(d) if d >= settings.stable_after);
    if try_again_later(close) {
        let next = if stable { TRY_AGAIN_LATER } else { backoff * 2 };
        return next
            .max(TRY_AGAIN_LATER)
            .min(settings.reconnect_max.max(TRY_AGAIN_LATER));
    }
    if stable {
        BACKOFF_START
    } else {
        (backoff * 2).min(settings.reconnect_max)
    }
}

/// The pause before the next handshake: `backoff` jittered down to half of it, but never
/// under [`TRY_AGAIN_LATER`] after a 1012/1013 close.
fn pause(backoff: Duration, close: Option<u16>) -> Duration {
    let ms = backoff.as_millis().max(2) as u64;
    let jittered = Duration::from_millis(rand::rng().random_range(ms / 2..=ms));
    if try_again_later(close) {
        jittered.max(TRY_AGAIN_LATER)
    } else {
        jittered
    }
}

async fn supervise(
    location: Arc<Location>,
    shared: Shared,
    connected: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let settings = &shared.settings;
    let metrics = &shared.intake.metrics;
    let id = location.id.as_str();
    let mut backoff = BACKOFF_START;
    let mut opened = 0u64;
    while !*stop.borrow() {
        tokio::select! {
            _ = shared.handshakes.permit() => {}
            _ = stop.changed() => break,
        }
        let (lasted, close) = match connect(&location, settings).await {
            Ok(socket) => {
                metrics
                    .websocket_handshakes
                    .with_label_values(&["open"])
                    .inc();
                tracing::info!(url = %settings.url, "WebSocket to Dojo open");
                connected.store(true, Ordering::SeqCst);
                metrics.websocket_connected.with_label_values(&[id]).set(1);
                if opened > 0 {
                    metrics.websocket_reconnects.with_label_values(&[id]).inc();
                }
                opened += 1;
                let since = Instant::now();
                let close = serve(socket, &location, &shared, &mut stop).await;
                connected.store(false, Ordering::SeqCst);
                metrics.websocket_connected.with_label_values(&[id]).set(0);
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(url = %settings.url, close_code = ?close, "WebSocket to Dojo lost; reconnecting");
                (Some(since.elapsed()), close)
            }
            Err(e) => {
                metrics
                    .websocket_handshakes
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(url = %settings.url, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot open the WebSocket to Dojo");
                (None, None)
            }
        };
        backoff = next_backoff(backoff, lasted, close, settings);
        tokio::select! {
            _ = tokio::time::sleep(pause(backoff, close)) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!("WebSocket client stopped");
}

/// Serves one connection until it fails, the peer goes quiet or closes, or stop.
/// Returns the close code the peer sent, if it sent one.
async fn serve(
    socket: Socket,
    location: &Arc<Location>,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Option<u16> {
    let settings = &shared.settings;
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
    let mut close_code = None;
    loop {
        tokio::select! {
            frame = source.next() => {
                last_seen = Instant::now();
                let message = match frame {
                    Some(Ok(Message::Text(t))) => Incoming::Text(t.to_string()),
                    Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                    Some(Ok(Message::Close(frame))) => {
                        close_code = frame.map(|f| u16::from(f.code));
                        break;
                    }
                    None => break,
                    Some(Ok(_)) => continue, // ping, pong: liveness only
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "WebSocket read failed");
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            let _ = outbox.try_send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Size,
                                reason: format!("message over {MAX_MESSAGE} bytes").into(),
                            })));
                        }
                        break;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let (shared, outbox, location) = (shared.clone(), outbox.clone(), location.clone());
                requests.spawn(async move {
                    if let Some(reply) = super::rpc::handle(&shared.intake, message, &location).await {
                        let _ = outbox.send(Message::Text(reply.into())).await;
                    }
                    drop(slot);
                }.in_current_span());
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
        // A short grace for a close frame already queued (1009), then the socket goes.
        let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
    }
    close_code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WsSettings {
        WsSettings {
            url: "ws://x".into(),
            software_house_id: None,
            reseller_id: None,
            ping_interval: Duration::from_secs(20),
            max_in_flight: 1,
            reconnect_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            handshakes_per_sec: 20,
            lease_retry: Duration::from_secs(2),
            lease_grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_backoff_restarts_only_after_a_stable_session() {
        let s = settings();
        let b = Duration::from_millis(800);
        // Accepted then closed at once: keeps growing, as a failed handshake does.
        assert_eq!(
            next_backoff(b, Some(Duration::from_millis(5)), None, &s),
            b * 2
        );
        assert_eq!(next_backoff(b, None, None, &s), b * 2);
        assert_eq!(
            next_backoff(Duration::from_secs(20), None, None, &s),
            s.reconnect_max
        );
        // A session that held: back to the start.
        assert_eq!(
            next_backoff(b, Some(s.stable_after), None, &s),
            BACKOFF_START
        );
    }

    #[test]
    fn try_again_later_is_backed_off_from_even_after_a_long_session() {
        let s = settings();
        for code in [1012, 1013] {
            let next = next_backoff(
                BACKOFF_START,
                Some(Duration::from_secs(3600)),
                Some(code),
                &s,
            );
            assert!(next >= TRY_AGAIN_LATER, "{code}: {next:?}");
            // Jitter never takes the pause under the floor.
            for _ in 0..100 {
                assert!(pause(next, Some(code)) >= TRY_AGAIN_LATER, "{code}");
            }
            // Closed at once again: the backoff grows, capped.
            let grown = next_backoff(next, Some(Duration::from_millis(5)), Some(code), &s);
            assert_eq!(grown, next * 2, "{code}");
            assert_eq!(
                next_backoff(s.reconnect_max, None, Some(code), &s),
                s.reconnect_max
            );
        }
    }

    #[test]
    fn try_again_later_after_a_stable_session_starts_the_backoff_again() {
        // Dojo restarting (1012) now and then must not push every reconnect to the cap.
        let s = settings();
        for code in [1012, 1013] {
            let next = next_backoff(s.reconnect_max, Some(s.stable_after), Some(code), &s);
            assert_eq!(next, TRY_AGAIN_LATER, "{code}");
        }
    }
}
