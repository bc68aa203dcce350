//! Dojo's end of the EPOS Data WebSocket: accepts the POS's connection (recording the
//! handshake headers), pushes JSON-RPC requests, and routes each reply to its caller by
//! `id`. Requests are multiplexed: many can be outstanding at once.

use anyhow::{anyhow, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

struct Connection {
    outbox: mpsc::UnboundedSender<Message>,
    tasks: [AbortHandle; 2],
}

#[derive(Default)]
struct Inner {
    handshakes: Mutex<Vec<HashMap<String, String>>>,
    current: Mutex<Option<Connection>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Frames that answered no outstanding request.
    strays: Mutex<Vec<Value>>,
    /// Close frames received: `(code, reason)`.
    closes: Mutex<Vec<(u16, String)>>,
    next_id: AtomicU64,
    expected_key: Option<String>,
}

/// Dojo's WebSocket endpoint. Cheap to clone.
#[derive(Clone)]
pub struct DojoWs {
    addr: SocketAddr,
    inner: Arc<Inner>,
    connections: watch::Sender<u64>,
}

impl DojoWs {
    /// Listens on `addr` (port 0 for any). With `expected_key`, a handshake without
    /// `Authorization: Basic <key>` is refused with 401, as Dojo would.
    pub async fn bind(addr: &str, expected_key: Option<String>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let server = Self {
            addr: listener.local_addr()?,
            inner: Arc::new(Inner {
                expected_key,
                ..Inner::default()
            }),
            connections: watch::channel(0).0,
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
        let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let authorized = match &inner.expected_key {
                None => true,
                Some(key) => headers.get("authorization") == Some(&format!("Basic {key}")),
            };
            inner.handshakes.lock().expect("lock").push(headers);
            if authorized {
                Ok(resp)
            } else {
                let mut refused = ErrorResponse::new(Some("invalid API key".into()));
                *refused.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refused)
            }
        };
        let socket = tokio_tungstenite::accept_hdr_async(stream, check).await?;
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
        let reader = tokio::spawn(async move {
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
        let previous = self
            .inner
            .current
            .lock()
            .expect("lock")
            .replace(Connection {
                outbox,
                tasks: [writer.abort_handle(), reader.abort_handle()],
            });
        if let Some(old) = previous {
            old.tasks.iter().for_each(AbortHandle::abort);
        }
        self.connections.send_modify(|n| *n += 1);
        Ok(())
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
        if let Some(conn) = self.inner.current.lock().expect("lock").as_ref() {
            conn.tasks[1].abort();
        }
    }

    /// Sends a raw text frame on the current connection.
    pub fn send_text(&self, text: String) -> anyhow::Result<()> {
        let current = self.inner.current.lock().expect("lock");
        let conn = current.as_ref().context("no POS connected")?;
        conn.outbox
            .send(Message::Text(text.into()))
            .map_err(|_| anyhow!("connection closed"))
    }

    /// Sends a JSON-RPC request and waits for the reply with the same `id`.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = format!("sim-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("lock")
            .insert(id.clone(), tx);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = self.send_text(request.to_string()) {
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
        let mut params: Value =
            serde_json::from_str(event_body).context("event body is not JSON")?;
        if let (Some(h), Some(obj)) = (headers, params.as_object_mut()) {
            obj.insert("headers".into(), h);
        }
        self.call("HandleEventV1", params, timeout).await
    }

    /// Drops the current connection abruptly (no close frame), as a crashed peer would.
    pub fn drop_connection(&self) {
        if let Some(conn) = self.inner.current.lock().expect("lock").take() {
            conn.tasks.iter().for_each(AbortHandle::abort);
        }
        // Outstanding calls fail now rather than at their timeout.
        self.inner.pending.lock().expect("lock").clear();
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
