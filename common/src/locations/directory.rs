//! The locations a running service serves now, and how they change without a restart
//! (`docs/LOCATIONS.md`, "Reload without restart"); ingress and the processor share it.
//!
//! - [`Directory`]: the current, validated [`Locations`], swapped whole; each request
//!   takes one snapshot at its start, so a reload never changes a request mid-way;
//! - [`watch_file`]: re-reads `DOJO_LOCATIONS_FILE` on SIGHUP and whenever its content
//!   differs from what was last read (polled: reading the path each time follows a
//!   Kubernetes Secret whose mount is swapped by symlink, where file-event watchers miss
//!   the change), applying it only if it validates whole.

use super::Locations;
use crate::settings::ConfigError;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
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

    /// A snapshot: what this request (or reconciliation) works with to its end.
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

/// What an applied file changed, by location id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: usize,
    /// The ids of the locations no longer served.
    pub removed: Vec<String>,
    /// Locations whose id stayed and whose settings changed.
    pub changed: usize,
    /// Locations served now.
    pub total: usize,
}

/// Validates `path` whole (with [`Locations::load`], then the service's own `check`)
/// and, if it validates, makes it the directory's current set.
///
/// # Errors
/// The file's one-line reason; the running set then stays.
pub fn reload(
    path: &str,
    directory: &Directory,
    check: &dyn Fn(&Locations) -> Result<(), ConfigError>,
) -> Result<Reloaded, ConfigError> {
    let locations = Locations::load(path)?;
    check(&locations)?;
    let before = directory.current();
    let reloaded = Reloaded {
        added: locations
            .iter()
            .filter(|l| before.get(&l.id).is_none())
            .count(),
        removed: before
            .iter()
            .filter(|l| locations.get(&l.id).is_none())
            .map(|l| l.id.clone())
            .collect(),
        changed: locations
            .iter()
            .filter(|l| before.get(&l.id).is_some_and(|b| **b != ***l))
            .count(),
        total: locations.len(),
    };
    directory.replace(locations);
    Ok(reloaded)
}

/// Watches `path` (checked every `poll`, and at once on SIGHUP) until `stop` turns true,
/// applying each new content that passes `check` with [`reload`] and logging the
/// outcome (`locations file applied`, or `locations file refused` with its reason);
/// `report` is told each outcome too (a service's metrics). With no file (`path`
/// `None`, the single-location variables) a SIGHUP only logs that there is nothing to
/// reload: it never stops the service.
///
/// The first check reads the file at once and applies it if it differs from the
/// directory (a change made while the service was starting, say waiting for its
/// database); an unchanged file is not logged or reported then.
pub async fn watch_file<C, F>(
    path: Option<String>,
    poll: Duration,
    directory: Directory,
    mut stop: watch::Receiver<bool>,
    check: C,
    mut report: F,
) where
    C: Fn(&Locations) -> Result<(), ConfigError> + Send,
    F: FnMut(&Result<Reloaded, ConfigError>) + Send,
{
    // Unknown at first: the first tick compares the file with the directory itself.
    let mut last = None;
    let mut first = true;
    let mut hangup = hangup_signal();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = recv(&mut hangup) => true,
            _ = stop.changed() => return,
        };
        let Some(path) = path.as_deref() else {
            if forced {
                tracing::info!("SIGHUP: no DOJO_LOCATIONS_FILE to reload");
            }
            continue;
        };
        let now = digest_of(path);
        if !forced && now == last && !first {
            continue;
        }
        last = now;
        let outcome = reload(path, &directory, &check);
        let quiet = std::mem::take(&mut first)
            && !forced
            && matches!(&outcome, Ok(r) if r.added == 0 && r.removed.is_empty() && r.changed == 0);
        if quiet {
            continue;
        }
        match &outcome {
            Ok(r) => tracing::info!(
                file = path,
                sighup = forced,
                added = r.added,
                removed = r.removed.len(),
                changed = r.changed,
                locations = r.total,
                "locations file applied"
            ),
            Err(e) => tracing::error!(
                file = path,
                error = %e,
                "locations file refused; the running configuration stays"
            ),
        }
        report(&outcome);
    }
}

/// Takes SIGHUP from the process's start: without it, a SIGHUP before [`watch_file`]
/// runs (a service still waiting for its database) is the signal's default, death.
/// Once taken, a SIGHUP nobody waits for is ignored (Tokio keeps the handler for the
/// process's life). Call early in `main`, inside the runtime.
pub fn take_hangup() {
    drop(hangup_signal());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that changed while the service was starting (it differs from the set the
    /// service began with) is applied at the watcher's first check, not at the next change.
    #[tokio::test]
    async fn a_change_made_before_the_watcher_starts_is_applied() {
        let file = std::env::temp_dir().join(format!("watch-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "[[location]]\nid = \"later\"\naccount_id = \"acc_b\"\n",
        )
        .unwrap();
        let at_start =
            Locations::from_toml("[[location]]\nid = \"first\"\naccount_id = \"acc_a\"\n").unwrap();
        let directory = Directory::new(at_start);
        let mut changes = directory.subscribe();
        let (stop, stopped) = watch::channel(false);
        let watcher = tokio::spawn(watch_file(
            Some(file.to_string_lossy().into_owned()),
            Duration::from_secs(3600),
            directory.clone(),
            stopped,
            |_: &Locations| Ok(()),
            |_| {},
        ));
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("applied at the first check, without waiting for the hour's poll")
            .unwrap();
        assert!(directory.current().get("later").is_some());
        assert!(directory.current().get("first").is_none());
        stop.send_replace(true);
        watcher.await.unwrap();
        std::fs::remove_file(file).unwrap();
    }
}
