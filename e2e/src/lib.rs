//! Test kit for the Dojo Events receiver.
//!
//! - [`isolation`]: a RabbitMQ vhost, a PostgreSQL database and a Redis key prefix per
//!   test, so tests run in parallel against the machine's real services and can break
//!   their own broker without touching anyone else's;
//! - [`private_broker`]: a throwaway RabbitMQ node of its own, for faults that take a
//!   whole node (alarms, stops) and must not touch the shared broker;
//! - [`wait_until`]: waiting on a condition with a deadline (never a bare sleep).
//!
//! Dojo itself is played by the `simulator` crate.

pub mod browser;
pub mod cluster;
pub mod isolation;
pub mod openapi;
pub mod private_broker;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
