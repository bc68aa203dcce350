//! The locations ingress serves now, and how they change without a restart.
//!
//! - [`Directory`] (`common::locations::directory`): the current, validated locations,
//!   swapped whole; each delivery takes one snapshot at its start, so a reload never
//!   changes a request mid-way;
//! - [`reload`]: re-reads `DOJO_LOCATIONS_FILE` on SIGHUP and when its content changes
//!   (a Kubernetes Secret swapped by symlink included), applying it only if it
//!   validates, and counts each outcome.

pub mod reload;

pub use common::locations::Directory;
