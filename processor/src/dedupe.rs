//! The Redis fast path of deduplication: a two-phase claim per event.
//!
//! Before work: `SET key processing NX GET PX <lease>` for every event of a batch, in
//! one pipelined round trip. If the key
//! was absent we hold the claim; if it says `done` the event is a known duplicate and
//! the database is not touched. After the commit the key becomes `done` for a long TTL;
//! on failure the claim is released so a redelivery is not held up.
//!
//! Redis is only an accelerator: every error or timeout here means "ask the database",
//! which is the truth. A `processing` key held by someone else also goes to the
//! database, whose locks serialise the two attempts.

use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROCESSING: &str = "processing";
const DONE: &str = "done";
/// Longest wait for Redis before going on without it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// While Redis stays unavailable, the warning is repeated at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether Redis answered last time, and when its loss was last logged.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    warned: Mutex<Option<Instant>>,
}

impl Health {
    fn answered(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            tracing::info!("Redis answers again: the deduplication fast path is back");
            *self.warned.lock().expect("lock") = None;
        }
    }

    /// Warns when Redis is lost, then at most every [`WARN_EVERY`] while it stays lost.
    fn failed(&self, why: &dyn std::fmt::Display) {
        self.down.store(true, Ordering::SeqCst);
        let mut warned = self.warned.lock().expect("lock");
        if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(error = %why, "Redis unavailable: deduplicating on the database alone (correct, slower); repeated at most every minute while it lasts");
        }
    }
}

/// What Redis says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// We hold the claim: process, then [`Dedupe::done`] or [`Dedupe::release`].
    Claimed,
    /// Already applied: ack without touching the database.
    Done,
    /// Someone else is on it, or Redis did not answer: let the database decide.
    Unknown,
}

#[derive(Clone)]
pub struct Dedupe {
    redis: Option<ConnectionManager>,
    health: Arc<Health>,
    prefix: String,
    lease: Duration,
    done_ttl: Duration,
}

impl Dedupe {
    /// Never fails: a bad URL or an unreachable server only disables the fast path
    /// (the connection is made lazily and re-made in the background).
    pub fn new(url: &str, prefix: &str, lease: Duration, done_ttl: Duration) -> Self {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let redis = redis::Client::open(url)
            .and_then(|c| c.get_connection_manager_lazy(config))
            .map_err(|e| tracing::warn!(error = %e, "Redis disabled: deduplicating on the database alone"))
            .ok();
        let health = Arc::new(Health::default());
        health.down.store(redis.is_none(), Ordering::SeqCst);
        Self {
            redis,
            health,
            prefix: prefix.to_owned(),
            lease,
            done_ttl,
        }
    }

    /// `{prefix}evt:{len(account)}:{account}:{event}`: the length keeps `a:b`+`c` and
    /// `a`+`b:c` apart. The prefix given to [`Dedupe::new`] ends with the database's
    /// identity (the processor adds it), so markers never outlive their database.
    pub fn key(&self, account_id: &str, event_id: &str) -> String {
        format!(
            "{}evt:{}:{}:{}",
            self.prefix,
            account_id.len(),
            account_id,
            event_id
        )
    }

    /// Asks Redis once (`PING`), so that [`Dedupe::is_up`] tells the truth before the
    /// first event; no answer within `REDIS_TIMEOUT` only marks the fast path down (and
    /// warns), as any later call would.
    pub async fn check(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let _ = self.run::<redis::Value>(pipe).await;
    }

    /// Whether the fast path works (Redis answered the last call): `/metrics` exposes it
    /// as `dojo_processor_redis_up`.
    pub fn is_up(&self) -> bool {
        !self.health.down.load(Ordering::SeqCst)
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Option<T> {
        let mut conn = self.redis.clone()?;
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.health.answered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.health.failed(&e);
                None
            }
            Err(_) => {
                self.health
                    .failed(&format!("no answer within {REDIS_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Claims every `(account, event)` of a batch in one round trip (a pipeline).
    pub async fn claim(&self, keys: &[(&str, &str)]) -> Vec<Claim> {
        let mut pipe = redis::pipe();
        for (account, event) in keys {
            pipe.cmd("SET")
                .arg(self.key(account, event))
                .arg(PROCESSING)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(self.lease.as_millis() as u64);
        }
        match self.run::<Vec<Option<String>>>(pipe).await {
            Some(answers) if answers.len() == keys.len() => answers
                .into_iter()
                .map(|a| match a.as_deref() {
                    None => Claim::Claimed,
                    Some(DONE) => Claim::Done,
                    Some(_) => Claim::Unknown,
                })
                .collect(),
            _ => vec![Claim::Unknown; keys.len()],
        }
    }

    /// Marks events applied (after the commit), in one round trip.
    pub async fn done(&self, keys: &[(&str, &str)]) {
        if keys.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (account, event) in keys {
            pipe.cmd("SET")
                .arg(self.key(account, event))
                .arg(DONE)
                .arg("EX")
                .arg(self.done_ttl.as_secs().max(1))
                .ignore();
        }
        let _ = self.run::<()>(pipe).await;
    }

    /// Drops our claims after a failure (only keys still saying `processing`).
    pub async fn release(&self, keys: &[(&str, &str)]) {
        if keys.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (account, event) in keys {
            pipe.cmd("EVAL")
                .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end")
                .arg(1)
                .arg(self.key(account, event))
                .arg(PROCESSING)
                .ignore();
        }
        let _ = self.run::<()>(pipe).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dojo_processor_redis_up` tells the truth from the start, not after the first event.
    #[tokio::test]
    async fn the_check_at_start_sees_whether_redis_answers() {
        let lease = Duration::from_secs(30);
        // Port 1: nothing listens there.
        let gone = Dedupe::new("redis://127.0.0.1:1", "test:", lease, lease);
        gone.check().await;
        assert!(!gone.is_up());
        let here = Dedupe::new("redis://127.0.0.1:6379", "test:", lease, lease);
        here.check().await;
        assert!(here.is_up());
    }
}
