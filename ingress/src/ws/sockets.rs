//! Keeps one [`WsClient`] per location that wants a WebSocket (`websocket = true` with an
//! API key), on the replica holding the [`lease`](super::lease), and follows the
//! locations as they are reloaded: a socket opens for an added location, closes (after
//! its in-flight replies) for a removed one, and is replaced when the location's key or
//! account changes. Sockets of different locations are independent tasks: one
//! location's slow or dead peer never delays another's requests.

use super::client::{Shared, WsClient};
use crate::locations::Directory;
use common::locations::{Location, Locations};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What `/readyz` shows about the sockets (information only: a Dojo WebSocket outage
/// does not take the webhook and REST channels out of service).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct SocketsStatus {
    /// Whether this replica holds the lease (and so the sockets).
    pub lease: bool,
    /// Sockets this replica keeps (one per location with `websocket = true`).
    pub wanted: usize,
    /// Of those, open now.
    pub open: usize,
}

#[derive(Default)]
struct Status {
    lease: AtomicBool,
    /// Each running client's `connected` flag.
    clients: Mutex<HashMap<String, Arc<AtomicBool>>>,
    wanted: AtomicUsize,
}

/// Handle on the manager task.
pub struct Sockets {
    status: Arc<Status>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Sockets {
    /// Starts the manager; sockets open while `lease` holds true.
    pub fn start(directory: Directory, shared: Shared, lease: watch::Receiver<bool>) -> Self {
        let status = Arc::new(Status::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(manage(directory, shared, lease, stopped, status.clone()));
        Self {
            status,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn status(&self) -> SocketsStatus {
        let open = self
            .status
            .clients
            .lock()
            .expect("lock")
            .values()
            .filter(|c| c.load(Ordering::SeqCst))
            .count();
        SocketsStatus {
            lease: self.status.lease.load(Ordering::SeqCst),
            wanted: self.status.wanted.load(Ordering::SeqCst),
            open,
        }
    }

    /// Closes every socket (in-flight replies sent first) and stops.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().expect("lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What decides whether a running socket is still the right one.
fn same_socket(a: &Location, b: &Location) -> bool {
    a.api_key() == b.api_key() && a.account_id == b.account_id
}

fn wanted(locations: &Locations) -> HashMap<String, Arc<Location>> {
    locations
        .iter()
        .filter(|l| l.websocket && l.api_key().is_some())
        .map(|l| (l.id.clone(), l.clone()))
        .collect()
}

async fn manage(
    directory: Directory,
    shared: Shared,
    mut lease: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    status: Arc<Status>,
) {
    let metrics = shared.intake.metrics.clone();
    let mut updates = directory.subscribe();
    let mut running: HashMap<String, (Arc<Location>, WsClient)> = HashMap::new();
    let mut closing = JoinSet::new();
    loop {
        let held = *lease.borrow_and_update();
        status.lease.store(held, Ordering::SeqCst);
        let want = if held {
            wanted(&updates.borrow_and_update().clone())
        } else {
            updates.borrow_and_update();
            HashMap::new()
        };
        status.wanted.store(want.len(), Ordering::SeqCst);
        let stale: Vec<String> = running
            .iter()
            .filter(|(id, (loc, _))| want.get(*id).is_none_or(|w| !same_socket(w, loc)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            let (_, client) = running.remove(&id).expect("listed");
            status.clients.lock().expect("lock").remove(&id);
            if !want.contains_key(&id) {
                let _ = metrics.websocket_configured.remove_label_values(&[&id]);
                let _ = metrics.websocket_connected.remove_label_values(&[&id]);
            }
            closing.spawn(client.shutdown());
        }
        for (id, location) in want {
            if running.contains_key(&id) {
                continue;
            }
            metrics
                .websocket_configured
                .with_label_values(&[&id])
                .set(1);
            metrics.websocket_connected.with_label_values(&[&id]).set(0);
            let client = WsClient::start(location.clone(), shared.clone());
            status
                .clients
                .lock()
                .expect("lock")
                .insert(id.clone(), client.connected_flag());
            running.insert(id, (location, client));
        }
        tokio::select! {
            r = updates.changed() => if r.is_err() { break },
            r = lease.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
            Some(_) = closing.join_next(), if !closing.is_empty() => {}
        }
    }
    for (_, (_, client)) in running.drain() {
        closing.spawn(client.shutdown());
    }
    while closing.join_next().await.is_some() {}
}
