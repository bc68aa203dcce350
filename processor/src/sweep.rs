//! Reconciliation sweeps: finding what Dojo never delivered (dojo-api.md §4c). Dojo has
//! no events API, so a sweep compares state:
//!
//! - **window**: per location with an API key, page through `POST /payment-intents/search`
//!   over `[now - SWEEP_WINDOW, now]` (`createdAt`) and absorb each intent
//!   (crate::reconcile: store its details, repair a status no event explains, create the
//!   record of an intent never heard of). Windows overlap (window > interval), so an
//!   intent is seen by several sweeps; repairs have deterministic ids and are recorded once;
//! - **overdue**: records still not final past Dojo's own limits (a Manual intent
//!   uncaptured after 7 days is reversed, an unauthorised one voided after 30 days) are
//!   fetched one by one (`GET`): their final event was missed.
//!
//! One replica sweeps a location at a time: a session advisory lock per location
//! (`pg_try_advisory_lock`), released when the sweep ends or its connection dies. Others
//! skip that location for this round.

use crate::reconcile::absorb;
use crate::Worker;
use chrono::{DateTime, Utc};
use common::dojo_api::{Credentials, Cursor, SearchRequest};
use common::locations::Location;
use common::settings::{optional, ConfigError, Source};
use sqlx::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `SWEEP_*` settings.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// `SWEEP_INTERVAL` (default `15m`; `0`: no periodic sweep): time between sweeps.
    pub interval: Option<Duration>,
    /// `SWEEP_WINDOW` (default `2h`): how far back each window sweep searches; longer
    /// than the interval, so windows overlap.
    pub window: Duration,
    /// `SWEEP_OVERDUE_LIMIT` (default 500): most overdue intents fetched per sweep.
    pub overdue_limit: i64,
    /// `REPAIR_GRACE` (default `60s`): a status change younger than this is not
    /// repaired yet: its event is most likely on its way (a details fetch looks again
    /// after it, the next overlapping sweep sees it again).
    pub repair_grace: Duration,
}

impl SweepSettings {
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let duration = |name: &str, default: &str| -> Result<Option<Duration>, ConfigError> {
            let text = optional(src, name).unwrap_or_else(|| default.to_owned());
            if text == "0" {
                return Ok(None);
            }
            crate::retry::parse_delay(&text).map(Some).ok_or_else(|| {
                ConfigError(format!(
                    "{name} {text:?}: a duration like 90s, 15m, 2h, 1d, or 0"
                ))
            })
        };
        let interval = duration("SWEEP_INTERVAL", "15m")?;
        let window = duration("SWEEP_WINDOW", "2h")?
            .ok_or_else(|| ConfigError("SWEEP_WINDOW must be positive".into()))?;
        if interval.is_some_and(|i| i >= window) {
            return Err(ConfigError(
                "SWEEP_WINDOW must be longer than SWEEP_INTERVAL (windows overlap)".into(),
            ));
        }
        Ok(Self {
            interval,
            window,
            overdue_limit: common::settings::parsed(src, "SWEEP_OVERDUE_LIMIT", 500)?,
            repair_grace: duration("REPAIR_GRACE", "60s")?.unwrap_or_default(),
        })
    }

    pub fn periodic(&self) -> bool {
        self.interval.is_some()
    }
}

/// What one sweep of one location did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub location: String,
    /// Intents Dojo listed (window) or that were fetched (overdue).
    pub seen: usize,
    /// Synthetic events applied.
    pub repaired: usize,
    /// Snapshots newer than the stored details.
    pub stored: usize,
    /// Another replica held the location's lock: nothing done.
    pub skipped: bool,
}

fn credentials(location: &Location) -> Option<Credentials> {
    Some(Credentials {
        location: location.id.clone(),
        key: location.api_key()?.clone(),
    })
}

/// Sweeps `location`'s window `[since, until)` and its overdue intents, under its lock.
pub async fn sweep_location(
    worker: &Worker,
    location: &Location,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport {
        location: location.id.clone(),
        ..SweepReport::default()
    };
    let Some(creds) = credentials(location) else {
        anyhow::bail!("location {:?} has no API key", location.id);
    };
    let mut lock = worker.pool.acquire().await?;
    let key = format!("dojo-sweep:{}", location.id);
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut *lock)
        .await?;
    if !held {
        report.skipped = true;
        return Ok(report);
    }
    let result = async {
        let started = Instant::now();
        window(worker, location, &creds, since, until, &mut report).await?;
        observe(worker, "window", started);
        let started = Instant::now();
        overdue(worker, location, &creds, &mut report).await?;
        observe(worker, "overdue", started);
        anyhow::Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(&key)
        .execute(&mut *lock)
        .await;
    result?;
    // For the console's overview; a failure here loses no repair.
    if let Err(e) = sqlx::query(
        "INSERT INTO sweep_runs (location_id, window_start, window_end, seen, repaired, stored)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&location.id)
    .bind(since)
    .bind(until)
    .bind(report.seen as i32)
    .bind(report.repaired as i32)
    .bind(report.stored as i32)
    .execute(&worker.pool)
    .await
    {
        tracing::warn!(error = %e, location = %location.id, "cannot record the sweep run");
    }
    worker
        .metrics
        .sweep_last_success
        .with_label_values(&[&location.id])
        .set(until.timestamp());
    Ok(report)
}

fn observe(worker: &Worker, kind: &str, started: Instant) {
    worker
        .metrics
        .sweep_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
}

/// The account of an intent the search listed: the location's, or (the implicit
/// `default` location has none) that of its record, if any.
async fn account_of(
    worker: &Worker,
    location: &Location,
    pi: &str,
) -> Result<Option<String>, sqlx::Error> {
    if let Some(a) = &location.account_id {
        return Ok(Some(a.clone()));
    }
    sqlx::query_scalar("SELECT account_id FROM payment_intents WHERE payment_intent_id = $1")
        .bind(pi)
        .fetch_optional(&worker.pool)
        .await
}

async fn window(
    worker: &Worker,
    location: &Location,
    creds: &Credentials,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    report: &mut SweepReport,
) -> anyhow::Result<()> {
    let mut request = SearchRequest {
        statuses: Vec::new(),
        start_date: Some(since),
        end_date: Some(until),
        cursor: Cursor {
            limit: 100,
            ..Cursor::default()
        },
    };
    loop {
        let page = worker.dojo.search(creds, &request).await?;
        for pi in &page.data {
            report.seen += 1;
            let Some(id) = pi.id.as_deref() else { continue };
            let Some(account) = account_of(worker, location, id).await? else {
                tracing::warn!(location = %location.id, payment_intent_id = id,
                    "an intent never delivered, for a location without account_id: not recorded");
                continue;
            };
            let absorbed = absorb(worker, &account, pi, "sweep").await?;
            report.repaired += usize::from(absorbed.repaired.is_some());
            report.stored += usize::from(absorbed.stored);
        }
        match page.after {
            Some(after) if !page.data.is_empty() => request.cursor.after = Some(after),
            _ => return Ok(()),
        }
    }
}

/// Records of this location still not final past Dojo's limits, not checked in the
/// last day: fetched one by one.
async fn overdue(
    worker: &Worker,
    location: &Location,
    creds: &Credentials,
    report: &mut SweepReport,
) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT payment_intent_id, account_id FROM payment_intents
         WHERE ($1::text IS NULL OR account_id = $1)
           AND ((status = 'Authorized' AND capture_mode = 'Manual' AND status_changed_at < now() - interval '7 days')
             OR (status = 'Created' AND status_changed_at < now() - interval '30 days'))
           AND (details_fetched_at IS NULL OR details_fetched_at < now() - interval '1 day')
         ORDER BY status_changed_at LIMIT $2",
    )
    .bind(location.account_id.as_deref())
    .bind(worker.settings.sweep.overdue_limit)
    .fetch_all(&worker.pool)
    .await?;
    for row in rows {
        let (id, account): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        report.seen += 1;
        match worker.dojo.get_payment_intent(creds, &id).await {
            Ok(pi) => {
                let absorbed = absorb(worker, &account, &pi, "overdue").await?;
                report.repaired += usize::from(absorbed.repaired.is_some());
                report.stored += usize::from(absorbed.stored);
            }
            Err(common::dojo_api::ApiError::NotFound) => {
                tracing::warn!(location = %location.id, payment_intent_id = %id, "overdue intent unknown to Dojo");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sweeps every location with a key, every `SWEEP_INTERVAL`, until `stop`.
pub async fn run_periodic(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let Some(interval) = worker.settings.sweep.interval else {
        return;
    };
    let mut next = tokio::time::Instant::now() + interval.min(Duration::from_secs(60));
    loop {
        // A location with a key and no completed sweep yet shows 0 ("never"), so that
        // `DojoSweepLagging` also fires for a location whose sweeps never succeed.
        for location in worker.locations.current().iter() {
            if location.api_key().is_some() {
                worker
                    .metrics
                    .sweep_last_success
                    .with_label_values(&[&location.id]);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return,
        }
        next = tokio::time::Instant::now() + interval;
        let until = Utc::now();
        let since = until
            - chrono::Duration::from_std(worker.settings.sweep.window).expect("a sane window");
        let locations: Vec<_> = worker
            .locations
            .current()
            .iter()
            .filter(|l| l.api_key().is_some())
            .cloned()
            .collect();
        for location in locations {
            if *stop.borrow() {
                return;
            }
            match sweep_location(&worker, &location, since, until).await {
                Ok(r) if r.skipped => {
                    tracing::debug!(location = %r.location, "another replica is sweeping")
                }
                Ok(r) => {
                    tracing::info!(location = %r.location, seen = r.seen, repaired = r.repaired,
                    stored = r.stored, "sweep done")
                }
                Err(e) => {
                    tracing::warn!(location = %location.id, error = %format!("{e:#}"), "sweep failed; next interval tries again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<SweepSettings, ConfigError> {
        let src: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SweepSettings::from_source(&src)
    }

    #[test]
    fn windows_overlap_and_zero_turns_the_periodic_sweep_off() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.interval, Some(Duration::from_secs(900)));
        assert_eq!(s.window, Duration::from_secs(7200));
        assert!(!settings(&[("SWEEP_INTERVAL", "0")]).unwrap().periodic());
        assert!(settings(&[("SWEEP_INTERVAL", "3h")]).is_err(), "no overlap");
        assert!(settings(&[("SWEEP_WINDOW", "soon")]).is_err());
        assert_eq!(
            settings(&[("SWEEP_WINDOW", "2d")]).unwrap().window,
            Duration::from_secs(2 * 86_400)
        );
    }
}
