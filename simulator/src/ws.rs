//! Dojo's end of the EPOS Data WebSocket: accepts the POS's connections (one per
//! location's API key, recording the handshake headers), pushes JSON-RPC requests on the
//! socket of a chosen key, and routes each reply to its caller by `id`. Requests are
//! multiplexed: many can be outstanding at once. It can also play an outage (refuse
//! every handshake with 503, drop every socket) and a peer that accepts and closes at
//! once with a chosen close code.

use anyhow::{anyhow, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
pub use tokio_tungstenite::tungstenite::Message;

struct Connection {
    serial: u64,
    outbox: mpsc::UnboundedSender<Message>,
    tasks: [AbortHandle; 2],
}

#[derive(Default)]
struct Inner {
    handshakes: Mutex<Vec<HashMap<String, String>>>,
    /// When each handshake was attempted (accepted or refused).
    handshake_times: Mutex<Vec<Instant>>,
    /// Open connections by API key (the key after `Basic `).
    open: Mutex<HashMap<String, Connection>>,
    /// The key of the most recent connection (the single-location calls use it).
    latest: Mutex<Option<String>>,
    serials: AtomicU64,
    /// While true, every handshake is refused with 503 (an outage).
    refusing: AtomicBool,
    /// When non-zero, every accepted socket is closed at once with this code.
    close_on_accept: AtomicU16,
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Frames that answered no outstanding request.
    strays: Mutex<Vec<Value>>,
    /// Close frames received: `(code, reason)`.
    closes: Mutex<Vec<(u16, String)>>,
    next_id: AtomicU64,
    /// Keys a handshake may present; `None`: any.
    expected_keys: Option<HashSet<String>>,
}

impl Inner {
    fn latest_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        let key = self.latest.lock().expect("lock").clone()?;
        self.open.lock().expect("lock").get(&key).map(f)
    }
}

/// Dojo's WebSocket endpoint. Cheap to clone.
#[derive(Clone)]
pub struct DojoWs {
    addr: SocketAddr,
    inner: Arc<Inner>,
    connections: watch::Sender<u64>,
    /// Open connections now.
    open_count: watch::Sender<usize>,
}

impl DojoWs {
    /// Listens on `addr` (port 0 for any). With `expected_key`, a handshake without
    /// `Authorization: Basic <key>` is refused with 401, as Dojo would.
    pub async fn bind(addr: &str, expected_key: Option<String>) -> std::io::Result<Self> {
        Self::bind_keys(addr, expected_key.map(|k| vec![k])).await
    }

    /// Listens on `addr`, accepting a handshake only with one of `keys` (any, if
    /// `None`): Dojo's endpoint as many locations' sockets see it.
    pub async fn bind_keys(addr: &str, keys: Option<Vec<String>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let server = Self {
            addr: listener.local_addr()?,
            inner: Arc::new(Inner {
                expected_keys: keys.map(|k| k.into_iter().collect()),
                ..Inner::default()
            }),
            connections: watch::channel(0).0,
            open_count: watch::channel(0).0,
        };
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = accepting.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.serve(stream).await {
                        tracing::debug!(error = %e, "websocket handshake failed");
                    }
                });
            }
        });
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/epos", self.addr)
    }

    async fn serve(&self, stream: TcpStream) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        // The signature is tungstenite's callback type; its error is a whole HTTP response.
        #[allow(clippy::result_large_err)]
        let check = move |req: &Request,
                          resp: Response,
                          key_slot: &Mutex<String>|
              -> Result<Response, ErrorResponse> {
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let key = headers
                .get("authorization")
                .and_then(|v| v.strip_prefix("Basic "))
                .unwrap_or("")
                .to_owned();
            let authorized = inner
                .expected_keys
                .as_ref()
                .is_none_or(|keys| keys.contains(&key));
            inner.handshakes.lock().expect("lock").push(headers);
            inner
                .handshake_times
                .lock()
                .expect("lock")
                .push(Instant::now());
            let refuse = |status: StatusCode, why: &str| {
                let mut refused = ErrorResponse::new(Some(why.into()));
                *refused.status_mut() = status;
                Err(refused)
            };
            if inner.refusing.load(Ordering::SeqCst) {
                refuse(StatusCode::SERVICE_UNAVAILABLE, "Dojo is unavailable")
            } else if authorized {
                *key_slot.lock().expect("lock") = key;
                Ok(resp)
            } else {
                refuse(StatusCode::UNAUTHORIZED, "invalid API key")
            }
        };
        let key_slot = Arc::new(Mutex::new(String::new()));
        // tungstenite's callback type again: its error is a whole HTTP response.
        #[allow(clippy::result_large_err)]
        let check = {
            let key_slot = key_slot.clone();
            move |req: &Request, resp: Response| check(req, resp, &key_slot)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(stream, check).await?;
        let key = key_slot.lock().expect("lock").clone();
        let code = self.inner.close_on_accept.load(Ordering::SeqCst);
        if code != 0 {
            self.connections.send_modify(|n| *n += 1);
            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: "try again later".into(),
            };
            let _ = socket.close(Some(frame)).await;
            return Ok(());
        }
        let (mut sink, mut source) = socket.split();
        let (outbox, mut queue) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let inner = self.inner.clone();
        let serial = self.inner.serials.fetch_add(1, Ordering::Relaxed);
        let (reader_key, open_count) = (key.clone(), self.open_count.clone());
        let reader = tokio::spawn(async move {
            let _gone = Gone {
                inner: inner.clone(),
                key: reader_key,
                serial,
                open_count,
            };
            while let Some(Ok(message)) = source.next().await {
                if let Message::Close(frame) = &message {
                    let (code, reason) = frame
                        .as_ref()
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    inner.closes.lock().expect("lock").push((code, reason));
                }
                if let Message::Text(text) = message {
                    let Ok(reply) = serde_json::from_str::<Value>(&text) else {
                        inner
                            .strays
                            .lock()
                            .expect("lock")
                            .push(Value::String(text.to_string()));
                        continue;
                    };
                    let id = reply
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    match inner.pending.lock().expect("lock").remove(&id) {
                        Some(waiter) => {
                            let _ = waiter.send(reply);
                        }
                        None => inner.strays.lock().expect("lock").push(reply),
                    }
                }
            }
        });
        let previous = {
            let mut open = self.inner.open.lock().expect("lock");
            let previous = open.insert(
                key.clone(),
                Connection {
                    serial,
                    outbox,
                    tasks: [writer.abort_handle(), reader.abort_handle()],
                },
            );
            *self.inner.latest.lock().expect("lock") = Some(key);
            // In this order: whoever sees the connection counted finds its socket open
            // and latest, and whoever sees N open sees at least N connections (a test
            // waiting for 20 open then read 19 connections).
            self.connections.send_modify(|n| *n += 1);
            self.open_count.send_replace(open.len());
            previous
        };
        if let Some(old) = previous {
            old.tasks.iter().for_each(AbortHandle::abort);
        }
        Ok(())
    }

    /// Sockets open now (one per key).
    pub fn open_connections(&self) -> usize {
        *self.open_count.borrow()
    }

    /// Waits until `n` sockets are open at once.
    pub async fn wait_for_open(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.open_count.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .map(|r| r.map(|_| ()));
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow!("server gone")),
            Err(_) => Err(anyhow!(
                "{} of {n} sockets open after {timeout:?}",
                self.open_connections()
            )),
        }
    }

    /// Whether the socket of `key` is open.
    pub fn is_open(&self, key: &str) -> bool {
        self.inner.open.lock().expect("lock").contains_key(key)
    }

    /// When each handshake was attempted, oldest first.
    pub fn handshake_times(&self) -> Vec<Instant> {
        self.inner.handshake_times.lock().expect("lock").clone()
    }

    /// An outage of the whole endpoint: every socket dropped, every handshake refused
    /// (503) until [`DojoWs::recover`].
    pub fn outage(&self) {
        self.inner.refusing.store(true, Ordering::SeqCst);
        let dropped: Vec<Connection> = {
            let mut open = self.inner.open.lock().expect("lock");
            let all = open.drain().map(|(_, c)| c).collect();
            self.open_count.send_replace(0);
            all
        };
        for conn in dropped {
            conn.tasks.iter().for_each(AbortHandle::abort);
        }
        self.inner.pending.lock().expect("lock").clear();
    }

    /// Ends [`DojoWs::outage`]: handshakes are accepted again.
    pub fn recover(&self) {
        self.inner.refusing.store(false, Ordering::SeqCst);
    }

    /// `Some(code)`: every accepted socket is closed at once with `code` (e.g. 1013,
    /// "try again later"), as an overloaded Dojo might; `None`: normal service.
    pub fn close_on_accept(&self, code: Option<u16>) {
        self.inner
            .close_on_accept
            .store(code.unwrap_or(0), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.connections.borrow()
    }

    /// Waits until at least `n` connections have been accepted.
    pub async fn wait_for_connection(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.connections.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(anyhow!("server gone")),
            Err(_) => Err(anyhow!("no WebSocket connection #{n} within {timeout:?}")),
        }
    }

    /// The handshake headers of every connection attempt, oldest first.
    pub fn handshakes(&self) -> Vec<HashMap<String, String>> {
        self.inner.handshakes.lock().expect("lock").clone()
    }

    /// Replies that matched no outstanding request (or were not JSON).
    pub fn strays(&self) -> Vec<Value> {
        self.inner.strays.lock().expect("lock").clone()
    }

    /// Close frames the POS sent: `(code, reason)`.
    pub fn closes(&self) -> Vec<(u16, String)> {
        self.inner.closes.lock().expect("lock").clone()
    }

    /// Stops reading the current connection while keeping it open: no more pongs or
    /// replies, as a hung peer behind a live TCP connection would behave.
    pub fn freeze(&self) {
        self.inner.latest_connection(|conn| conn.tasks[1].abort());
    }

    /// Sends a raw text frame on the most recent connection.
    pub fn send_text(&self, text: String) -> anyhow::Result<()> {
        self.send(None, Message::Text(text.into()))
    }

    /// Sends a raw text frame on the socket of `key`.
    pub fn send_text_on(&self, key: &str, text: String) -> anyhow::Result<()> {
        self.send(Some(key), Message::Text(text.into()))
    }

    /// Sends `frame` on the socket of `key`, or on the most recent connection.
    fn send(&self, key: Option<&str>, frame: Message) -> anyhow::Result<()> {
        let sent = match key {
            Some(key) => {
                let open = self.inner.open.lock().expect("lock");
                let conn = open
                    .get(key)
                    .with_context(|| format!("no socket open for key {}", mask(key)))?;
                conn.outbox.send(frame)
            }
            None => self
                .inner
                .latest_connection(|conn| conn.outbox.send(frame))
                .context("no POS connected")?,
        };
        sent.map_err(|_| anyhow!("connection closed"))
    }

    /// Sends a JSON-RPC request on the most recent connection and waits for the reply
    /// with the same `id`.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.call_via(None, method, params, timeout).await
    }

    /// [`DojoWs::call`] on the socket of location key `key`.
    pub async fn call_on(
        &self,
        key: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.call_via(Some(key), method, params, timeout).await
    }

    async fn call_via(
        &self,
        key: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.call_raw(key, method, &params.to_string(), timeout)
            .await
    }

    /// A request whose `params` is `params_text` exactly as given (any valid JSON text,
    /// also what `serde_json::Value` cannot hold, such as a lone surrogate escape).
    pub async fn call_raw(
        &self,
        key: Option<&str>,
        method: &str,
        params_text: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = format!("sim-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let request = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":{},"params":{params_text}}}"#,
            json!(id),
            json!(method)
        );
        self.exchange(key, &id, Message::Text(request.into()), timeout)
            .await
    }

    /// Sends `frame` as it is (text or binary, any bytes) on the most recent connection
    /// and waits for the reply whose `id` is the string `id`: for requests no well-formed
    /// client would send.
    pub async fn call_frame(
        &self,
        id: &str,
        frame: Message,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.exchange(None, id, frame, timeout).await
    }

    async fn exchange(
        &self,
        key: Option<&str>,
        id: &str,
        frame: Message,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = id.to_owned();
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("lock")
            .insert(id.clone(), tx);
        if let Err(e) = self.send(key, frame) {
            self.inner.pending.lock().expect("lock").remove(&id);
            return Err(e);
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.inner.pending.lock().expect("lock").remove(&id);
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(anyhow!("connection dropped before the reply to {id}")),
            Err(_) => Err(anyhow!("no reply to {id} within {timeout:?}")),
        }
    }

    /// `HandleEventV1` for one event body, with optional requestor headers.
    pub async fn handle_event(
        &self,
        event_body: &str,
        headers: Option<Value>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let params = event_params(event_body, headers)?;
        self.call("HandleEventV1", params, timeout).await
    }

    /// `HandleEventV1` on the socket of location key `key`.
    pub async fn handle_event_on(
        &self,
        key: &str,
        event_body: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let params = event_params(event_body, None)?;
        self.call_on(key, "HandleEventV1", params, timeout).await
    }

    /// Drops the most recent connection abruptly (no close frame), as a crashed peer
    /// would.
    pub fn drop_connection(&self) {
        let key = self.inner.latest.lock().expect("lock").clone();
        let conn = key.and_then(|k| {
            let mut open = self.inner.open.lock().expect("lock");
            let conn = open.remove(&k);
            self.open_count.send_replace(open.len());
            conn
        });
        if let Some(conn) = conn {
            conn.tasks.iter().for_each(AbortHandle::abort);
        }
        // Outstanding calls fail now rather than at their timeout.
        self.inner.pending.lock().expect("lock").clear();
    }
}

fn event_params(event_body: &str, headers: Option<Value>) -> anyhow::Result<Value> {
    let mut params: Value = serde_json::from_str(event_body).context("event body is not JSON")?;
    if let (Some(h), Some(obj)) = (headers, params.as_object_mut()) {
        obj.insert("headers".into(), h);
    }
    Ok(params)
}

/// A key as it may be shown: its first characters only.
fn mask(key: &str) -> String {
    format!("{}***", key.chars().take(12).collect::<String>())
}

/// Forgets a connection when its reader ends (the POS closed it or it broke), unless a
/// newer connection of the same key replaced it already.
struct Gone {
    inner: Arc<Inner>,
    key: String,
    serial: u64,
    open_count: watch::Sender<usize>,
}

impl Drop for Gone {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock().expect("lock");
        if open.get(&self.key).is_some_and(|c| c.serial == self.serial) {
            open.remove(&self.key);
        }
        self.open_count.send_replace(open.len());
    }
}

/// True if `reply` is the success reply Dojo expects for `HandleEventV1`.
pub fn is_success(reply: &Value) -> bool {
    reply.get("jsonrpc") == Some(&json!("2.0"))
        && reply.get("method") == Some(&json!("HandleEventV1"))
        && reply.get("result") == Some(&json!({}))
        && reply.get("error").is_none()
}

/// The `errorType` of an error reply.
pub fn error_type(reply: &Value) -> Option<&str> {
    reply.get("error")?.get("errorType")?.as_str()
}
