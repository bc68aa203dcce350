//! One stream client: its own cursor, read from the outbox on every wake-up (a
//! notification, the fallback poll), written as Server-Sent Events into a bounded
//! queue. A client that lets the queue fill is cut off with a last comment saying how
//! to resume; nothing grows without bound.

use super::store::{self, Filter, Page, PaymentUpdate};
use crate::Worker;
use actix_web::web::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Most rows read per query.
const PAGE: i64 = 500;
/// The comment sent before cutting a slow client off.
pub const SLOW: &str = ": slow consumer, resume with Last-Event-ID\n\n";

fn event(u: &PaymentUpdate) -> Bytes {
    let data = serde_json::to_string(u).expect("an update serialises");
    Bytes::from(format!(
        "id: {}\nevent: payment_update\ndata: {data}\n\n",
        u.seq
    ))
}

/// Why a client's stream ended.
enum End {
    Gone,
    Slow,
}

/// Queues `bytes`, keeping the last slot for the cut-off comment.
fn push(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), End> {
    if tx.is_closed() {
        return Err(End::Gone);
    }
    if tx.capacity() <= 1 {
        let _ = tx.try_send(Bytes::from_static(SLOW.as_bytes()));
        return Err(End::Slow);
    }
    tx.try_send(bytes).map_err(|_| End::Gone)
}

fn send_all(
    tx: &mpsc::Sender<Bytes>,
    updates: &[PaymentUpdate],
    cursor: &mut Option<i64>,
) -> Result<(), End> {
    for u in updates {
        push(tx, event(u))?;
        *cursor = Some(u.seq);
    }
    Ok(())
}

/// Serves one client until it goes away, is too slow, or the database refuses for good.
pub async fn serve(
    worker: Arc<Worker>,
    filter: Filter,
    mut cursor: Option<i64>,
    first: Vec<PaymentUpdate>,
    tx: mpsc::Sender<Bytes>,
    mut wakeups: watch::Receiver<i64>,
) {
    let settings = worker.settings.feed.clone();
    let metrics = &worker.metrics;
    metrics.feed_clients.inc();
    let retry = format!("retry: {}\n\n", settings.retry.as_millis());
    let mut poll = tokio::time::interval(settings.poll);
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.tick().await;
    let mut closing = worker.feed.closing();
    let mut full = first.len() as i64 == PAGE;
    let mut result = push(&tx, Bytes::from(retry)).and_then(|_| send_all(&tx, &first, &mut cursor));
    while result.is_ok() {
        if !full {
            tokio::select! {
                _ = wakeups.changed() => {}
                _ = poll.tick() => {}
                _ = heartbeat.tick() => {
                    result = push(&tx, Bytes::from_static(b": heartbeat\n\n"));
                    continue;
                }
                _ = tx.closed() => break,
                _ = closing.wait_for(|c| *c) => {
                    let _ = tx.try_send(Bytes::from_static(
                        b": server shutting down, resume with Last-Event-ID\n\n",
                    ));
                    break;
                }
            }
        }
        match store::page(&worker.pool, &filter, cursor, PAGE).await {
            Ok(Page::Updates(updates)) => {
                full = updates.len() as i64 == PAGE;
                result = send_all(&tx, &updates, &mut cursor);
            }
            Ok(Page::Gone { .. }) => {
                let _ = tx.try_send(Bytes::from_static(
                    b": cursor older than the retention, resync from the records\n\n",
                ));
                result = Err(End::Gone);
            }
            // A database hiccup: the next wake-up or poll tries again.
            Err(e) => {
                tracing::warn!(error = %e, "payment feed read failed; retrying on the next poll");
                full = false;
            }
        }
    }
    if let Err(End::Slow) = result {
        metrics.feed_cutoffs.inc();
        tracing::info!(cursor, "payment feed client too slow; cut off");
    }
    metrics.feed_clients.dec();
}
