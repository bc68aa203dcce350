//! Reloading `DOJO_LOCATIONS_FILE` without a restart: on SIGHUP, and whenever the
//! file's content differs from what was last read (checked every
//! `INGRESS_LOCATIONS_POLL_MS`; reading the path each time follows a Kubernetes Secret
//! whose mount is swapped by symlink, where file-event watchers miss the change).
//!
//! A new file is validated whole before anything changes: a file that fails is refused
//! (logged with its one-line reason, counted as `refused`), and the running
//! configuration stays. An applied file replaces the [`Directory`] atomically; the
//! WebSocket manager follows it (sockets of added locations open, of removed ones close
//! after their in-flight replies).

use super::Directory;
use crate::metrics::Metrics;
use common::locations::Locations;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Watches `path` until `stop` turns true.
pub async fn watch_file(
    path: String,
    poll: Duration,
    directory: Directory,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = digest_of(&path);
    let mut hangup = hangup_signal();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = recv(&mut hangup) => true,
            _ = stop.changed() => return,
        };
        let now = digest_of(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        reload(&path, &directory, &metrics, forced);
    }
}

/// Validates and applies the file once. Returns whether it was applied.
pub fn reload(path: &str, directory: &Directory, metrics: &Metrics, forced: bool) -> bool {
    match Locations::load(path) {
        Ok(locations) => {
            let before = directory.current();
            let added = locations
                .iter()
                .filter(|l| before.get(&l.id).is_none())
                .count();
            let removed: Vec<String> = before
                .iter()
                .filter(|l| locations.get(&l.id).is_none())
                .map(|l| l.id.clone())
                .collect();
            let changed = locations
                .iter()
                .filter(|l| before.get(&l.id).is_some_and(|b| **b != ***l))
                .count();
            metrics.locations.set(locations.len() as i64);
            directory.replace(locations);
            for id in &removed {
                metrics.forget_location(id);
            }
            metrics
                .locations_reloads
                .with_label_values(&["applied"])
                .inc();
            tracing::info!(
                file = path,
                sighup = forced,
                added,
                removed = removed.len(),
                changed,
                "locations file applied"
            );
            true
        }
        Err(e) => {
            metrics
                .locations_reloads
                .with_label_values(&["refused"])
                .inc();
            tracing::error!(file = path, error = %e, "locations file refused; the running configuration stays");
            false
        }
    }
}

/// SHA-256 of the file's content; `None` while it cannot be read.
fn digest_of(path: &str) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn recv(signal: &mut Hangup) {
    #[cfg(unix)]
    if let Some(s) = signal {
        s.recv().await;
        return;
    }
    let _ = signal;
    std::future::pending::<()>().await
}
