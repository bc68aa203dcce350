//! Payment details, off the acknowledgement path: a background task takes due rows of
//! `enrichment_outbox` (written with each applied event, crate::apply), fetches each
//! intent from Dojo (`GET /payment-intents/{id}?returnCanceled=true`, with the key of
//! the location that owns the intent's account), stores the snapshot
//! (crate::snapshot), repairs a status no event explained (crate::reconcile), and
//! deletes the row. Failures stay in the row: `attempts` (of them, 404s also in
//! `not_found_attempts`, migration 0010), `last_error`, and `due_at`
//! pushed back (Dojo's `Retry-After`, else exponential backoff), so a SIGKILL or a Dojo
//! outage loses no fetch. Taking a row leases it (`due_at` moved ahead by the lease):
//! replicas never fetch one row at once, and a dead replica's rows come back.

use crate::Worker;
use common::dojo_api::{ApiError, Credentials};
use common::locations::Locations;
use common::settings::{parsed, ConfigError, Source};
use futures::StreamExt;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `ENRICH_*` settings.
#[derive(Debug, Clone)]
pub struct EnrichSettings {
    /// Whether fetches are scheduled at all: some location has an API key, and
    /// `ENRICH_ENABLED` (default true) is not false (sweeps then still store details).
    pub enabled: bool,
    /// `ENRICH_DELAY_MS` (default 500): a new row waits this long, so a burst of events
    /// for one payment gives one fetch.
    pub delay: Duration,
    /// `ENRICH_POLL_MS` (default 250): how often due rows are looked for when idle.
    pub poll: Duration,
    /// `ENRICH_LEASE_MS` (default 60 000): how long a taken row is another's to fetch.
    pub lease: Duration,
    /// `ENRICH_CONCURRENCY` (default 8): fetches under way at once (each key is still
    /// throttled to `DOJO_API_RATE`).
    pub concurrency: usize,
    /// `ENRICH_BACKOFF_MS` (default 1 000) and `ENRICH_BACKOFF_MAX_MS` (default 300 000):
    /// the first and the longest pause after a failed fetch (doubling in between).
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// `ENRICH_NOT_FOUND_ATTEMPTS` (default 5): 404s before the row is dropped (logged).
    pub not_found_attempts: i32,
}

impl EnrichSettings {
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let enabled = parsed(src, "ENRICH_ENABLED", true)?
            && Locations::from_source(src, false)?
                .iter()
                .any(|l| l.api_key().is_some());
        Ok(Self {
            enabled,
            delay: common::settings::millis(src, "ENRICH_DELAY_MS", 500)?,
            poll: common::settings::millis(src, "ENRICH_POLL_MS", 250)?
                .max(Duration::from_millis(10)),
            lease: common::settings::millis(src, "ENRICH_LEASE_MS", 60_000)?
                .max(Duration::from_millis(100)),
            concurrency: parsed(src, "ENRICH_CONCURRENCY", 8usize)?.max(1),
            backoff: common::settings::millis(src, "ENRICH_BACKOFF_MS", 1_000)?
                .max(Duration::from_millis(1)),
            backoff_max: common::settings::millis(src, "ENRICH_BACKOFF_MAX_MS", 300_000)?,
            not_found_attempts: parsed(src, "ENRICH_NOT_FOUND_ATTEMPTS", 5)?,
        })
    }

    /// The pause after the `attempts`th failure.
    pub fn backoff_after(&self, attempts: i32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << attempts.clamp(0, 20).saturating_sub(1));
        doubled.min(self.backoff_max)
    }
}

/// The key for `account`: its location's first API key, else that of the implicit
/// `default` location (single-location variables: any account).
pub fn credentials(locations: &Locations, account: &str) -> Option<Credentials> {
    let location = locations.by_account(account).or_else(|| {
        locations
            .get(common::locations::DEFAULT_LOCATION)
            .filter(|l| l.account_id.is_none())
    })?;
    Some(Credentials {
        location: location.id.clone(),
        key: location.api_key()?.clone(),
    })
}

/// A row taken for fetching.
struct Claimed {
    payment_intent_id: String,
    account_id: String,
    generation: i64,
    attempts: i32,
    /// Of those failures, answers of 404 (dropped at `ENRICH_NOT_FOUND_ATTEMPTS`).
    not_found_attempts: i32,
}

/// How long after the consumers' last full batch fetches keep waiting.
const BACKLOG_WINDOW: Duration = Duration::from_secs(1);

/// Runs until `stop`: takes due rows, fetches them `concurrency` at a time, none while
/// the consumers drain a backlog (a full batch within [`BACKLOG_WINDOW`]).
pub async fn run(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let settings = worker.settings.enrich.clone();
    let mut counted = Instant::now() - Duration::from_secs(60);
    while !*stop.borrow() {
        if counted.elapsed() >= Duration::from_secs(1) {
            counted = Instant::now();
            if let Ok(n) = pending(&worker.pool).await {
                worker.metrics.fetches_pending.set(n);
            }
        }
        // Events first: while the consumers drain a backlog, fetches wait (they would
        // compete for the same database and cores; docs/PERFORMANCE.md, "Payment
        // details"), and resume within a second of the last full batch.
        if worker.backlog.seen_within(BACKLOG_WINDOW) {
            tokio::select! {
                _ = tokio::time::sleep(settings.poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let claimed = match claim(&worker.pool, &settings).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take details fetches; trying again");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(settings.poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // In-flight fetches finish on shutdown (each is bounded by the client's
        // timeouts and attempts); an interrupted one would only wait out its lease.
        futures::stream::iter(claimed)
            .for_each_concurrent(settings.concurrency, |c| {
                let worker = worker.clone();
                async move { fetch_one(&worker, c).await }
            })
            .await;
    }
}

pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM enrichment_outbox")
        .fetch_one(pool)
        .await
}

async fn claim(pool: &PgPool, settings: &EnrichSettings) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query(
        "UPDATE enrichment_outbox AS o SET due_at = now() + $2 * interval '1 millisecond'
         FROM (SELECT payment_intent_id FROM enrichment_outbox WHERE due_at <= now()
               ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS due
         WHERE o.payment_intent_id = due.payment_intent_id
         RETURNING o.payment_intent_id, o.account_id, o.generation, o.attempts,
                   o.not_found_attempts",
    )
    .bind((settings.concurrency * 4) as i64)
    .bind(settings.lease.as_millis() as f64)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(Claimed {
            payment_intent_id: r.try_get(0)?,
            account_id: r.try_get(1)?,
            generation: r.try_get(2)?,
            attempts: r.try_get(3)?,
            not_found_attempts: r.try_get(4)?,
        })
    })
    .collect()
}

async fn fetch_one(worker: &Worker, c: Claimed) {
    let outcome = match fetch_and_store(worker, &c).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(payment_intent_id = %c.payment_intent_id, error = %e, "storing details failed; retrying later");
            let _ = reschedule(&worker.pool, &worker.settings.enrich, &c, "database", None).await;
            "retried"
        }
    };
    worker.metrics.fetches.with_label_values(&[outcome]).inc();
}

async fn fetch_and_store(worker: &Worker, c: &Claimed) -> Result<&'static str, sqlx::Error> {
    let pool = &worker.pool;
    let Some(creds) = credentials(&worker.locations.current(), &c.account_id) else {
        // The account's location has no key (any more): enrichment is off for it.
        done(pool, c).await?;
        return Ok("no_key");
    };
    match worker
        .dojo
        .get_payment_intent(&creds, &c.payment_intent_id)
        .await
    {
        Ok(snapshot) => {
            let (absorbed, tx) =
                crate::reconcile::absorb_open(worker, &c.account_id, &snapshot, "enrichment")
                    .await?;
            // The row's bookkeeping commits with the snapshot: one commit per fetch.
            let mut tx = match tx {
                Some(tx) => tx,
                None => pool.begin().await?,
            };
            if absorbed.deferred {
                let grace = worker.settings.sweep.repair_grace;
                let reason = "a recent change no event explains yet";
                reschedule(&mut *tx, &worker.settings.enrich, c, reason, Some(grace)).await?;
                tx.commit().await?;
                return Ok("deferred");
            }
            done(&mut *tx, c).await?;
            tx.commit().await?;
            Ok(if absorbed.stored {
                "stored"
            } else {
                "not_newer"
            })
        }
        Err(ApiError::NotFound)
            if c.not_found_attempts + 1 >= worker.settings.enrich.not_found_attempts =>
        {
            tracing::warn!(payment_intent_id = %c.payment_intent_id, location = %creds.location,
                not_found = c.not_found_attempts + 1, attempts = c.attempts + 1,
                "unknown to Dojo with this location's key; fetch dropped");
            done(pool, c).await?;
            Ok("not_found")
        }
        Err(ApiError::NotFound) => {
            sqlx::query(
                "UPDATE enrichment_outbox SET not_found_attempts = not_found_attempts + 1
                 WHERE payment_intent_id = $1",
            )
            .bind(&c.payment_intent_id)
            .execute(pool)
            .await?;
            let error = ApiError::NotFound.to_string();
            reschedule(pool, &worker.settings.enrich, c, &error, None).await?;
            Ok("retried")
        }
        Err(ApiError::KeyBroken { .. }) => {
            let wait = worker.dojo.config.key_cooldown;
            let settings = &worker.settings.enrich;
            reschedule(pool, settings, c, "key refused (401/403)", Some(wait)).await?;
            Ok("key_broken")
        }
        Err(ApiError::Unavailable {
            reason,
            retry_after,
        }) => {
            reschedule(pool, &worker.settings.enrich, c, &reason, retry_after).await?;
            Ok("retried")
        }
        Err(e) => {
            reschedule(pool, &worker.settings.enrich, c, &e.to_string(), None).await?;
            Ok("retried")
        }
    }
}

/// Deletes the row if no new request came since it was taken; otherwise makes it due
/// again after the coalescing delay.
async fn done(db: impl sqlx::PgExecutor<'_>, c: &Claimed) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH gone AS (DELETE FROM enrichment_outbox
                       WHERE payment_intent_id = $1 AND generation = $2 RETURNING 1)
         UPDATE enrichment_outbox SET due_at = now(), attempts = 0, not_found_attempts = 0,
                last_error = NULL
         WHERE payment_intent_id = $1 AND NOT EXISTS (SELECT 1 FROM gone)",
    )
    .bind(&c.payment_intent_id)
    .bind(c.generation)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failure and when to try again: Dojo's ask if longer than the backoff.
async fn reschedule(
    db: impl sqlx::PgExecutor<'_>,
    settings: &EnrichSettings,
    c: &Claimed,
    error: &str,
    at_least: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let wait = settings
        .backoff_after(c.attempts + 1)
        .max(at_least.unwrap_or_default());
    tracing::debug!(payment_intent_id = %c.payment_intent_id, error, ?wait, "details fetch failed; rescheduled");
    sqlx::query(
        "UPDATE enrichment_outbox SET attempts = attempts + 1, last_error = $2,
                due_at = now() + $3 * interval '1 millisecond'
         WHERE payment_intent_id = $1",
    )
    .bind(&c.payment_intent_id)
    .bind(error.chars().take(500).collect::<String>())
    .bind(wait.as_millis() as f64)
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let src: HashMap<String, String> = [
            ("ENRICH_BACKOFF_MS".to_owned(), "100".to_owned()),
            ("ENRICH_BACKOFF_MAX_MS".to_owned(), "1000".to_owned()),
        ]
        .into();
        let s = EnrichSettings::from_source(&src).unwrap();
        assert!(!s.enabled, "no key, no enrichment");
        let waits: Vec<u128> = (1..=6).map(|a| s.backoff_after(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_key_is_the_location_of_the_account_or_the_default() {
        let file = Locations::from_toml(
            "[[location]]\nid = \"soho\"\naccount_id = \"acc_s\"\napi_keys = [\"sk_s\"]\n\
             [[location]]\nid = \"camden\"\naccount_id = \"acc_c\"\n",
        )
        .unwrap();
        assert_eq!(credentials(&file, "acc_s").unwrap().location, "soho");
        assert!(credentials(&file, "acc_c").is_none(), "no key: off");
        assert!(credentials(&file, "acc_other").is_none());
        let single: HashMap<String, String> =
            [("DOJO_API_KEY".to_owned(), "sk_d".to_owned())].into();
        let single = Locations::from_source(&single, false).unwrap();
        assert_eq!(
            credentials(&single, "acc_any").unwrap().key.expose(),
            "sk_d"
        );
    }
}
