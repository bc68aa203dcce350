//! The locations ingress serves now, and how they change without a restart.
//!
//! - [`Directory`]: the current, validated [`Locations`], swapped whole; each delivery
//!   takes one snapshot at its start, so a reload never changes a request mid-way;
//! - [`reload`]: re-reads `DOJO_LOCATIONS_FILE` on SIGHUP and when its content changes
//!   (a Kubernetes Secret swapped by symlink included), applying it only if it validates.

pub mod reload;

use common::locations::Locations;
use std::sync::Arc;
use tokio::sync::watch;

/// The current locations; cheap to clone, every clone sees every change.
#[derive(Clone)]
pub struct Directory {
    current: Arc<watch::Sender<Arc<Locations>>>,
}

impl Directory {
    pub fn new(locations: Locations) -> Self {
        Self {
            current: Arc::new(watch::Sender::new(Arc::new(locations))),
        }
    }

    /// A snapshot: what this delivery (or reconciliation) works with to its end.
    pub fn current(&self) -> Arc<Locations> {
        self.current.borrow().clone()
    }

    /// Replaces the whole set at once.
    pub fn replace(&self, locations: Locations) {
        self.current.send_replace(Arc::new(locations));
    }

    /// Wakes on every replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Locations>> {
        self.current.subscribe()
    }
}
