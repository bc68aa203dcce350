//! The cap on WebSocket handshakes of one replica, all locations together
//! (`INGRESS_WS_HANDSHAKES_PER_SEC`): evenly spaced permits (GCRA, no burst beyond one),
//! each delayed by a little jitter, so that after a Dojo-wide outage hundreds of
//! sockets come back in a steady stream rather than a storm.

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Shared by every location's client; cheap to clone.
#[derive(Clone)]
pub struct Handshakes {
    limiter: Arc<DefaultDirectRateLimiter>,
    jitter: Jitter,
}

impl Handshakes {
    /// `per_second` handshakes at most (at least 1).
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        let spacing = Duration::from_secs(1) / rate.get();
        Self {
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(NonZeroU32::MIN),
            )),
            jitter: Jitter::up_to(spacing / 2),
        }
    }

    /// Waits for the next handshake's turn.
    pub async fn permit(&self) {
        self.limiter.until_ready_with_jitter(self.jitter).await;
    }
}
