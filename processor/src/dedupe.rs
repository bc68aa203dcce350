//! The Redis fast path of deduplication: a two-phase claim per event.
//!
//! Before work: `SET key processing NX GET PX <lease>` in one round trip. If the key
//! was absent we hold the claim; if it says `done` the event is a known duplicate and
//! the database is not touched. After the commit the key becomes `done` for a long TTL;
//! on failure the claim is released so a redelivery is not held up.
//!
//! Redis is only an accelerator: every error or timeout here means "ask the database",
//! which is the truth. A `processing` key held by someone else also goes to the
//! database, whose row lock serialises the two attempts.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use std::time::Duration;

const PROCESSING: &str = "processing";
const DONE: &str = "done";
/// Longest wait for Redis before going on without it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

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
        Self {
            redis,
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

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.redis.clone()?;
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Redis unavailable; using the database alone");
                None
            }
            Err(_) => {
                tracing::debug!("Redis timed out; using the database alone");
                None
            }
        }
    }

    pub async fn claim(&self, account_id: &str, event_id: &str) -> Claim {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(account_id, event_id))
            .arg(PROCESSING)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(self.lease.as_millis() as u64);
        match self.run::<Option<String>>(cmd).await {
            Some(None) => Claim::Claimed,
            Some(Some(v)) if v == DONE => Claim::Done,
            _ => Claim::Unknown,
        }
    }

    /// Marks the event applied (after the commit).
    pub async fn done(&self, account_id: &str, event_id: &str) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(account_id, event_id))
            .arg(DONE)
            .arg("EX")
            .arg(self.done_ttl.as_secs().max(1));
        let _ = self.run::<()>(cmd).await;
    }

    /// Drops our claim after a failure, unless it already says `done`.
    pub async fn release(&self, account_id: &str, event_id: &str) {
        let Some(mut conn) = self.redis.clone() else {
            return;
        };
        let key = self.key(account_id, event_id);
        let release = async {
            let v: Option<String> = conn.get(&key).await?;
            if v.as_deref() == Some(PROCESSING) {
                let _: () = conn.del(&key).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        let _ = tokio::time::timeout(REDIS_TIMEOUT, release).await;
    }
}
