//! Reloading `DOJO_LOCATIONS_FILE` without a restart: on SIGHUP, and whenever the
//! file's content differs from what was last read (checked every
//! `INGRESS_LOCATIONS_POLL_MS`), through `common::locations::directory::watch_file`.
//!
//! A new file is validated whole before anything changes: a file that fails is refused
//! (logged with its one-line reason, counted as `refused`), and the running
//! configuration stays. An applied file replaces the [`Directory`] atomically; the
//! WebSocket manager follows it (sockets of added locations open, of removed ones close
//! after their in-flight replies), and the removed locations' metric series go.

use super::Directory;
use crate::metrics::Metrics;
use common::locations::directory;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Watches `path` (none: SIGHUP is only logged) until `stop` turns true.
pub async fn watch_file(
    path: Option<String>,
    poll: Duration,
    directory: Directory,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    // Ingress has no check of its own beyond the file's validation.
    let check = |_: &common::locations::Locations| Ok(());
    let served = directory.clone();
    directory::watch_file(
        path,
        poll,
        directory,
        stop,
        check,
        |outcome| match outcome {
            Ok(reloaded) => {
                metrics.locations.set(reloaded.total as i64);
                for id in &reloaded.removed {
                    metrics.forget_location(id);
                }
                metrics.know_locations(&served.current());
                metrics
                    .locations_reloads
                    .with_label_values(&["applied"])
                    .inc();
            }
            Err(_) => metrics
                .locations_reloads
                .with_label_values(&["refused"])
                .inc(),
        },
    )
    .await
}
