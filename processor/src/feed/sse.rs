//! One stream client. Its position `at` means "every update up to `at` was considered
//! (sent if it matched the filter)". It catches up from the table (its own query) when
//! it starts, when it missed part of the shared tail, or when the tail ran too far ahead;
//! otherwise it takes the updates the process's one tail reader
//! ([`super::listener::tail`]) hands out and filters them in memory. Events go into a
//! bounded queue; a client that lets it fill is cut off with a last comment saying how
//! to resume; nothing grows without bound.

use super::listener::Batch;
use super::store::{self, Filter, Page, PaymentUpdate};
use crate::Worker;
use actix_web::web::Bytes;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

/// Most rows read per query.
pub const PAGE: i64 = 500;
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

/// Reads the table from `at` until it has seen everything visible; sends what matches.
async fn catch_up(
    worker: &Worker,
    filter: &Filter,
    tx: &mpsc::Sender<Bytes>,
    at: &mut i64,
) -> Result<(), End> {
    loop {
        let read = async {
            // Everything up to `head` is visible before the page is read (updates become
            // visible in seq order), so a short page means "seen through head".
            let head = store::head(&worker.pool).await?;
            Ok::<_, sqlx::Error>((
                head,
                store::page(&worker.pool, filter, Some(*at), PAGE).await?,
            ))
        };
        match read.await {
            Ok((head, Page::Updates(updates))) => {
                let full = updates.len() as i64 == PAGE;
                for u in &updates {
                    push(tx, event(u))?;
                    *at = u.seq;
                }
                if !full {
                    *at = (*at).max(head);
                    return Ok(());
                }
            }
            Ok((_, Page::Gone { .. } | Page::Ahead { .. })) => {
                let _ = tx.try_send(Bytes::from_static(
                    b": cursor outside what the feed keeps (pruned, or another database's), resync from the records\n\n",
                ));
                return Err(End::Gone);
            }
            Err(e) => {
                // The next batch from the tail (or the next poll of it) tries again.
                tracing::warn!(error = %e, "payment feed read failed; retrying");
                return Ok(());
            }
        }
    }
}

/// Takes what the shared tail read; `false`: part of it was missed, catch up.
fn take(
    filter: &Filter,
    tx: &mpsc::Sender<Bytes>,
    at: &mut i64,
    batch: &Batch,
) -> Result<bool, End> {
    if batch.from > *at {
        return Ok(false);
    }
    for u in batch.updates.iter().filter(|u| u.seq > *at) {
        if filter.matches(u) {
            push(tx, event(u))?;
        }
    }
    *at = (*at).max(batch.to);
    Ok(true)
}

/// Serves one client from position `at` (the first page already sent by the handler)
/// until it goes away, is too slow, or the process stops.
pub async fn serve(
    worker: Arc<Worker>,
    filter: Filter,
    mut at: i64,
    first: Vec<PaymentUpdate>,
    tx: mpsc::Sender<Bytes>,
    mut batches: broadcast::Receiver<Arc<Batch>>,
) {
    let settings = worker.settings.feed.clone();
    let metrics = &worker.metrics;
    metrics.feed_clients.inc();
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.tick().await;
    let mut closing = worker.feed.closing();
    if *closing.borrow_and_update() {
        return metrics.feed_clients.dec();
    }
    let retry = Bytes::from(format!("retry: {}\n\n", settings.retry.as_millis()));
    let mut result = push(&tx, retry);
    for u in &first {
        result = result.and_then(|_| push(&tx, event(u)));
        at = u.seq;
    }
    if result.is_ok() {
        result = catch_up(&worker, &filter, &tx, &mut at).await;
    }
    while result.is_ok() {
        tokio::select! {
            got = batches.recv() => {
                result = match got {
                    Ok(batch) => match take(&filter, &tx, &mut at, &batch) {
                        Ok(true) => Ok(()),
                        Ok(false) => catch_up(&worker, &filter, &tx, &mut at).await,
                        Err(end) => Err(end),
                    },
                    Err(RecvError::Lagged(_)) => catch_up(&worker, &filter, &tx, &mut at).await,
                    Err(RecvError::Closed) => break,
                };
            }
            _ = heartbeat.tick() => result = push(&tx, Bytes::from_static(b": heartbeat\n\n")),
            _ = tx.closed() => break,
            // Only ever set to true (crate::feed::listener::Hub::close).
            _ = closing.changed() => {
                let _ = tx.try_send(Bytes::from_static(
                    b": server shutting down, resume with Last-Event-ID\n\n",
                ));
                break;
            }
        }
    }
    if let Err(End::Slow) = result {
        metrics.feed_cutoffs.inc();
        tracing::info!(at, "payment feed client too slow; cut off");
    }
    metrics.feed_clients.dec();
}
