//! One `LISTEN` connection per process (application_name `dojo-feed-listener`) on
//! `payment_updates` (numbered updates: wakes the [`tail`] reader, hence every stream,
//! through a `watch` of the latest notified `seq`) and `payment_updates_pending`
//! (written updates: wakes the [`sequencer`](super::sequencer)). A notification is only
//! a hint: the tail and the sequencer also poll every `FEED_POLL_MS`, so a notification
//! lost (the connection dropped, a reconnect) delays an update, never loses it.
//! Retention is pruned here too.

use crate::Worker;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `application_name` of the listening connection (find it in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "dojo-feed-listener";
/// The NOTIFY channel the sequencer signals numbered updates on (payload: the highest
/// `seq`).
pub const CHANNEL: &str = "payment_updates";
/// The NOTIFY channel the outbox trigger signals written, not yet numbered, updates on.
pub const PENDING_CHANNEL: &str = "payment_updates_pending";

/// Consecutive updates read once for the whole process: every update with
/// `from < seq <= to`, in order.
#[derive(Debug)]
pub struct Batch {
    pub from: i64,
    pub to: i64,
    pub updates: Vec<super::store::PaymentUpdate>,
}

pub struct Hub {
    /// The wake-ups the tail reader waits on: the highest `seq` notified so far (0 at
    /// start). A notification at or below what the tail has already passed on (this
    /// process's own sequencer's, whose rows were handed over directly) is not read.
    latest: watch::Sender<i64>,
    /// "Read the tail whatever was notified": the listener (re)connected, so
    /// notifications may have been missed.
    catch_up: tokio::sync::Notify,
    /// True while this process's sequencer takes a turn: the turn's notification is not
    /// read back, since its rows come through [`Hub::numbered`] right after.
    turn: std::sync::atomic::AtomicBool,
    /// Bumped when updates are written and wait for the sequencer.
    pending: watch::Sender<u64>,
    /// The tail of the outbox, read by one task ([`tail`]) and shared by every stream.
    batches: tokio::sync::broadcast::Sender<Arc<Batch>>,
    /// True once the process stops: streams end (clients resume elsewhere), so a
    /// graceful shutdown does not wait for them.
    closing: watch::Sender<bool>,
    /// What this process's sequencer numbered, handed to [`tail`] without a read.
    direct: tokio::sync::mpsc::UnboundedSender<Vec<super::store::PaymentUpdate>>,
    direct_rx: std::sync::Mutex<
        Option<tokio::sync::mpsc::UnboundedReceiver<Vec<super::store::PaymentUpdate>>>,
    >,
}

impl Default for Hub {
    fn default() -> Self {
        let (direct, direct_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            latest: watch::channel(0).0,
            catch_up: tokio::sync::Notify::new(),
            turn: std::sync::atomic::AtomicBool::new(false),
            pending: watch::channel(0).0,
            // Bounded: a stream that falls this far behind reads the table itself.
            batches: tokio::sync::broadcast::channel(1024).0,
            closing: watch::channel(false).0,
            direct,
            direct_rx: std::sync::Mutex::new(Some(direct_rx)),
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// Wake-ups of the sequencer.
    pub fn pending(&self) -> watch::Receiver<u64> {
        self.pending.subscribe()
    }

    pub fn batches(&self) -> tokio::sync::broadcast::Receiver<Arc<Batch>> {
        self.batches.subscribe()
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every stream of this process.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Wakes the tail reader: updates up to `seq` are numbered.
    pub fn wake(&self, seq: i64) {
        // `send_modify` wakes every receiver even when the value stays the same.
        self.latest.send_modify(|l| *l = (*l).max(seq));
    }

    /// This process's sequencer starts a turn; [`Hub::numbered`] ends it.
    pub fn turn_started(&self) {
        self.turn.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ends the sequencer's turn with what it numbered (consecutive `seq`, in order;
    /// empty when nothing was pending or the turn failed): the tail passes them on
    /// without reading them back when they follow what it has, and reads what was
    /// notified meanwhile.
    pub fn numbered(&self, updates: Vec<super::store::PaymentUpdate>) {
        let highest = updates.last().map_or(0, |u| u.seq);
        if self.direct.send(updates).is_err() {
            // No tail task: a wake-up makes whoever reads the tail read them.
            self.wake(highest);
        }
        self.turn.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Wakes this process's sequencer: updates were written (by a commit of this
    /// process, or, through `NOTIFY payment_updates_pending`, of any).
    pub fn wake_sequencer(&self) {
        self.pending.send_modify(|n| *n = n.wrapping_add(1));
    }
}

async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen_all([CHANNEL, PENDING_CHANNEL]).await?;
    Ok(listener)
}

/// Listens until `stop`; reconnects after any failure (streams keep polling meanwhile).
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let hub = &worker.feed;
    loop {
        let mut listener = match listen(&worker.settings.database_url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "feed listener cannot connect; streams poll meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        // Whatever was notified while not listening is read now.
        hub.catch_up.notify_one();
        hub.wake_sequencer();
        loop {
            tokio::select! {
                got = listener.try_recv() => match got {
                    Ok(Some(n)) if n.channel() == PENDING_CHANNEL => hub.wake_sequencer(),
                    Ok(Some(n)) => hub.wake(n.payload().parse().unwrap_or(0)),
                    Ok(None) | Err(_) => {
                        tracing::warn!("feed listener connection lost; reconnecting");
                        worker.metrics.feed_listener_reconnects.inc();
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Reads the outbox's tail once per wake-up (a notification, or every `FEED_POLL_MS`:
/// a lost notification only delays) and hands it to every stream: one query per
/// wake-up for the process, however many clients.
pub async fn tail(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let hub = &worker.feed;
    let pool = &worker.pool;
    let mut wake = hub.subscribe();
    let mut poll = tokio::time::interval(worker.settings.feed.poll);
    let mut direct = hub
        .direct_rx
        .lock()
        .expect("the hub's lock")
        .take()
        .expect("one tail task per process");
    let mut at = None;
    loop {
        tokio::select! {
            biased;
            Some(mut updates) = direct.recv() => {
                // Numbered here: what follows what the tail has is passed on as it is;
                // the tail reads only for a gap (another process's turn between) or for
                // what was notified beyond it.
                if let Some(from) = at {
                    updates.retain(|u| u.seq > from);
                    let to = match updates.first().map(|u| u.seq) {
                        None => from,
                        Some(first) if first == from + 1 => {
                            let to = updates.last().map_or(from, |u| u.seq);
                            let _ = hub.batches.send(Arc::new(Batch { from, to, updates }));
                            at = Some(to);
                            to
                        }
                        Some(_) => i64::MIN,
                    };
                    if *wake.borrow_and_update() <= to {
                        continue;
                    }
                }
            }
            _ = wake.changed() => {
                let notified = *wake.borrow_and_update();
                if let Some(at) = at {
                    // Passed on already, or this process's turn (its rows come directly,
                    // and what else was notified is read after them).
                    if notified <= at || hub.turn.load(std::sync::atomic::Ordering::Acquire) {
                        continue;
                    }
                }
            }
            _ = hub.catch_up.notified() => {}
            _ = poll.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = read_tail(hub, pool, &mut at).await {
            tracing::warn!(error = %e, "reading the payment feed's tail failed; trying again");
        }
    }
}

async fn read_tail(
    hub: &Hub,
    pool: &sqlx::PgPool,
    at: &mut Option<i64>,
) -> Result<(), sqlx::Error> {
    let from = match *at {
        Some(from) => from,
        None => *at.insert(super::store::head(pool).await?),
    };
    let mut from = from;
    loop {
        let page = super::store::page(pool, &Default::default(), Some(from), 1000).await?;
        let updates = match page {
            super::store::Page::Updates(u) => u,
            // Pruned past the tail (a long outage), or a tail beyond a replaced
            // database's head: start again from the head.
            super::store::Page::Gone { .. } | super::store::Page::Ahead { .. } => {
                *at = None;
                return Ok(());
            }
        };
        let Some(to) = updates.last().map(|u| u.seq) else {
            return Ok(());
        };
        let full = updates.len() == 1000;
        let _ = hub.batches.send(Arc::new(Batch { from, to, updates }));
        from = to;
        *at = Some(to);
        if !full {
            return Ok(());
        }
    }
}

/// Prunes the outbox past `FEED_RETENTION` once a minute and sets the oldest-kept gauges.
pub async fn prune(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(60).min(worker.settings.feed.retention);
    loop {
        match super::store::prune(&worker.pool, worker.settings.feed.retention).await {
            Ok(oldest) => {
                let (seq, age) = oldest.unwrap_or((0, 0.0));
                worker.metrics.feed_oldest_seq.set(seq);
                worker.metrics.feed_oldest_age.set(age as i64);
            }
            Err(e) => tracing::warn!(error = %e, "pruning the payment feed failed; trying again"),
        }
        // The console's duplicate deliveries share the feed's retention.
        let retention = worker.settings.feed.retention;
        if let Err(e) = crate::console::payment::prune_duplicates(&worker.pool, retention).await {
            tracing::warn!(error = %e, "pruning duplicate deliveries failed; trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
