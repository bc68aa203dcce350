//! `GET /console`: the system at a glance: events per minute by channel and outcome,
//! receipt-to-commit lag, queue depths, WebSockets per location (from ingress's
//! `/metrics`), the last sweep of each location and its repairs.

use super::auth::Staff;
use super::view::{html, Frame, When};
use crate::Worker;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use askama::Template;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Minutes of history in the events table.
const MINUTES: i32 = 15;

pub struct Minute {
    pub at: When,
    pub counts: Vec<i64>,
}

pub struct Socket {
    pub location: String,
    pub connected: bool,
    pub ingress: String,
}

pub struct Sweep {
    pub location: String,
    pub window_end: When,
    pub finished: When,
    pub seen: i32,
    pub repaired: i32,
    pub stored: i32,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    frame: Frame,
    columns: Vec<String>,
    minutes: Vec<Minute>,
    /// `p50 ... ms, p99 ... ms over N events`, or empty.
    lag: String,
    waiting: u32,
    dead: u32,
    /// Why the queue depths are unknown, or empty.
    queue_error: String,
    sockets: Vec<Socket>,
    sockets_note: String,
    sweeps: Vec<Sweep>,
    repairs_today: i64,
}

/// The last [`MINUTES`] minutes of deliveries: `(minute, channel/outcome, count)`.
async fn per_minute(pool: &sqlx::PgPool) -> Result<Vec<(DateTime<Utc>, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_trunc('minute', received_at) AS minute, channel || ' ' || outcome, count(*)
         FROM dojo_events WHERE received_at > now() - make_interval(mins => $1)
         GROUP BY 1, 2
         UNION ALL
         SELECT date_trunc('minute', received_at), channel || ' duplicate', count(*)
         FROM dojo_event_duplicates WHERE received_at > now() - make_interval(mins => $1)
         GROUP BY 1, 2",
    )
    .bind(MINUTES)
    .fetch_all(pool)
    .await
}

/// Receipt (by ingress) to commit (by the processor) over the last five minutes:
/// p50 and p99 in milliseconds, and how many events.
async fn lag(pool: &sqlx::PgPool) -> Result<Option<(f64, f64, i64)>, sqlx::Error> {
    let (p50, p99, n): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), count(*)
         FROM (SELECT EXTRACT(EPOCH FROM processed_at - received_at) * 1000 AS ms
               FROM dojo_events
               WHERE received_at > now() - interval '5 minutes' AND channel <> 'reconcile') AS t",
    )
    .fetch_one(pool)
    .await?;
    Ok(p50.zip(p99).map(|(a, b)| (a, b, n)))
}

/// `dojo_ingress_websocket_connected{location="..."} 1` lines of each ingress.
async fn sockets(urls: &[String]) -> (Vec<Socket>, String) {
    if urls.is_empty() {
        return (
            Vec::new(),
            "Set CONSOLE_INGRESS_METRICS to ingress's /metrics URL(s) to see the WebSockets here."
                .into(),
        );
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client");
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for url in urls {
        let text = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => {
                failed.push(format!("{url}: HTTP {}", r.status().as_u16()));
                continue;
            }
            Err(_) => {
                failed.push(format!("{url}: unreachable"));
                continue;
            }
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("dojo_ingress_websocket_connected{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let location = labels
                .split(',')
                .find_map(|l| l.strip_prefix("location=\""))
                .map(|l| l.trim_end_matches('"').to_owned())
                .unwrap_or_default();
            found.push(Socket {
                location,
                connected: value.trim() == "1",
                ingress: url.clone(),
            });
        }
    }
    found.sort_by(|a, b| a.location.cmp(&b.location));
    let note = if !failed.is_empty() {
        format!("Could not read {}.", failed.join("; "))
    } else if found.is_empty() {
        "No ingress holds a WebSocket now (none configured, or another replica holds the lease: list every ingress in CONSOLE_INGRESS_METRICS).".into()
    } else {
        String::new()
    };
    (found, note)
}

async fn sweeps(pool: &sqlx::PgPool) -> Result<(Vec<Sweep>, i64), sqlx::Error> {
    type Row = (String, DateTime<Utc>, DateTime<Utc>, i32, i32, i32);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT DISTINCT ON (location_id) location_id, window_end, finished_at, seen, repaired, stored
         FROM sweep_runs ORDER BY location_id, finished_at DESC",
    )
    .fetch_all(pool)
    .await?;
    // Every repair (a sweep's, or one found when fetching details) is a synthetic event
    // on channel `reconcile`.
    let repairs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dojo_events WHERE channel = 'reconcile' AND outcome = 'applied' AND received_at > now() - interval '24 hours'",
    )
    .fetch_one(pool)
    .await?;
    Ok((
        rows.into_iter()
            .map(|(location, end, finished, seen, repaired, stored)| Sweep {
                location,
                window_end: end.into(),
                finished: finished.into(),
                seen,
                repaired,
                stored,
            })
            .collect(),
        repairs,
    ))
}

pub async fn page(staff: Staff, worker: web::Data<Arc<Worker>>) -> HttpResponse {
    let pool = &worker.pool;
    let (counts, lag, sweeps) = match tokio::try_join!(per_minute(pool), lag(pool), sweeps(pool)) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "console overview query failed");
            return super::view::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database did not answer; try again in a moment (the processor's /readyz says whether it is reachable).",
            );
        }
    };
    let queue = tokio::time::timeout(
        Duration::from_secs(3),
        crate::dlq::depths(&worker.settings.amqp_url),
    )
    .await
    .map_err(|_| "RabbitMQ did not answer within 3 s".to_owned())
    .and_then(|r| r.map_err(|e| format!("{e:#}")));
    let (sockets, sockets_note) = sockets(&worker.settings.console.ingress_metrics).await;

    let columns: BTreeSet<String> = counts.iter().map(|c| c.1.clone()).collect();
    let columns: Vec<String> = columns.into_iter().collect();
    let mut by_minute: BTreeMap<DateTime<Utc>, Vec<i64>> = BTreeMap::new();
    for (minute, column, n) in counts {
        let i = columns.iter().position(|c| *c == column).expect("a column");
        by_minute
            .entry(minute)
            .or_insert_with(|| vec![0; columns.len()])[i] += n;
    }
    let minutes = by_minute
        .into_iter()
        .rev()
        .map(|(at, counts)| Minute {
            at: at.into(),
            counts,
        })
        .collect();
    let (sweeps, repairs_today) = sweeps;
    let ((waiting, dead), queue_error) = match queue {
        Ok(depths) => (depths, String::new()),
        Err(e) => ((0, 0), e),
    };
    let lag = lag.map_or(String::new(), |(p50, p99, n)| {
        format!("p50 {p50:.0} ms, p99 {p99:.0} ms over {n} events")
    });
    html(
        StatusCode::OK,
        &OverviewPage {
            frame: Frame::new(&staff, "overview"),
            columns,
            minutes,
            lag,
            waiting,
            dead,
            queue_error,
            sockets,
            sockets_note,
            sweeps,
            repairs_today,
        },
    )
}
