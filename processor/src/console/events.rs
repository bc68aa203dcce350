//! `GET /console/events`: every distinct event, newest first, filtered by location,
//! type, status, channel, outcome and time range, or found by event id, payment intent
//! id or order reference. Keyset pagination on `(received_at, account_id, event_id)`
//! (index `dojo_events_received`, migration 0008), so a page costs the same at any
//! depth (docs/PERFORMANCE.md, "The console's event list").

use super::auth::Staff;
use super::view::{html, Frame, When};
use crate::Worker;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use askama::Template;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use sqlx::{Postgres, QueryBuilder};
use std::sync::Arc;

/// Rows per page.
pub const PAGE: usize = 50;

/// The query string of the event list (every field optional; empty means "any").
#[derive(Debug, Default, Deserialize)]
pub struct EventQuery {
    pub location: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub outcome: Option<String>,
    /// From this time (RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` read as UTC).
    pub from: Option<String>,
    /// Up to (not including) this time.
    pub to: Option<String>,
    /// An event id, payment intent id, or order reference (`reference` or
    /// `orderDetails.externalId`).
    pub q: Option<String>,
    /// The cursor: the last row of the previous page, `receivedAt|accountId|eventId`.
    pub after: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time of the form, as UTC.
fn instant(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .map(|t| t.and_utc())
}

pub struct Row {
    pub event_id: String,
    pub account_id: String,
    pub event_type: String,
    pub payment_intent_id: String,
    pub status: String,
    pub channel: String,
    pub outcome: String,
    pub received: When,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    frame: Frame,
    locations: Vec<String>,
    query: Echo,
    rows: Vec<Row>,
    /// The next page's link (same filters, the cursor after this page), or empty.
    next: String,
    error: String,
    took_ms: String,
}

/// The form's values, shown back.
#[derive(Default)]
pub struct Echo {
    pub location: String,
    pub event_type: String,
    pub status: String,
    pub channel: String,
    pub outcome: String,
    pub from: String,
    pub to: String,
    pub q: String,
}

/// Only the accounts of `location` (the implicit `default` location without an account:
/// every account no other location claims).
fn push_location(b: &mut QueryBuilder<'_, Postgres>, worker: &Worker, location: &str) -> bool {
    let locations = worker.locations.current();
    let Some(l) = locations.get(location) else {
        return false;
    };
    match &l.account_id {
        Some(account) => {
            b.push(" AND e.account_id = ").push_bind(account.clone());
        }
        None => {
            let others: Vec<String> = locations
                .iter()
                .filter_map(|o| o.account_id.clone())
                .collect();
            b.push(" AND NOT (e.account_id = ANY(")
                .push_bind(others)
                .push("))");
        }
    }
    true
}

/// `Err`: what is wrong with a filter no row can match (NUL, or too long), for the user
/// (the same rule as the feed's filters: `crate::api::valid_filter`).
pub fn check_text(name: &str, value: &str) -> Result<(), String> {
    if !crate::api::valid_filter(value) {
        return Err(format!(
            "{name}: at most {} characters, without NUL; ids, references and orders are shorter.",
            crate::api::MAX_FILTER
        ));
    }
    Ok(())
}

/// One page of the list; `Err` is a message for the user.
pub async fn list(worker: &Worker, q: &EventQuery) -> Result<(Vec<Row>, String), String> {
    for (name, value) in [
        ("Location", &q.location),
        ("Type", &q.event_type),
        ("Status", &q.status),
        ("Channel", &q.channel),
        ("Outcome", &q.outcome),
        ("From", &q.from),
        ("To", &q.to),
        ("Search", &q.q),
        ("Page link", &q.after),
    ] {
        if let Some(v) = value {
            check_text(name, v)?;
        }
    }
    let mut b: QueryBuilder<Postgres> = QueryBuilder::new("");
    if let Some(text) = given(&q.q) {
        // The search first, each branch an index lookup (event id: the primary key, event id first;
        // intent: dojo_events_payment_intent; order reference: the payment_intents
        // indexes), materialised so the planner cannot trade them for a walk of the
        // whole list in received order (180 ms at a million events).
        b.push("WITH hits AS MATERIALIZED (SELECT account_id, event_id FROM dojo_events WHERE event_id = ")
            .push_bind(text.to_owned())
            .push(" UNION SELECT account_id, event_id FROM dojo_events WHERE payment_intent_id = ")
            .push_bind(text.to_owned())
            .push(
                " UNION SELECT d.account_id, d.event_id FROM payment_intents p \
                 JOIN dojo_events d ON d.payment_intent_id = p.payment_intent_id \
                 WHERE p.reference = ",
            )
            .push_bind(text.to_owned())
            .push(" OR p.order_id = ")
            .push_bind(text.to_owned())
            .push(") ");
    }
    b.push(
        "SELECT e.event_id, e.account_id, e.event_type, COALESCE(e.payment_intent_id, ''),
                COALESCE(e.payment_status, ''), e.channel, e.outcome, e.received_at
         FROM dojo_events e WHERE true",
    );
    if given(&q.q).is_some() {
        b.push(" AND (e.account_id, e.event_id) IN (SELECT account_id, event_id FROM hits)");
    }
    if let Some(location) = given(&q.location) {
        if !push_location(&mut b, worker, location) {
            return Err(format!("No location {location:?} in the locations file."));
        }
    }
    for (column, value) in [
        ("e.event_type", given(&q.event_type)),
        ("e.payment_status", given(&q.status)),
        ("e.channel", given(&q.channel)),
        ("e.outcome", given(&q.outcome)),
    ] {
        if let Some(v) = value {
            b.push(format!(" AND {column} = ")).push_bind(v.to_owned());
        }
    }
    for (op, value, name) in [(">=", given(&q.from), "From"), ("<", given(&q.to), "To")] {
        if let Some(text) = value {
            let t = instant(text).ok_or_else(|| {
                format!("{name}: {text:?} is not a time (2026-11-30T12:00, UTC, or RFC 3339).")
            })?;
            b.push(format!(" AND e.received_at {op} ")).push_bind(t);
        }
    }
    if let Some(after) = given(&q.after) {
        let mut parts = after.splitn(3, '|');
        let (Some(t), Some(account), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("The page link is damaged; start again from the first page.".into());
        };
        let t = DateTime::parse_from_rfc3339(t)
            .map_err(|_| "The page link is damaged; start again from the first page.".to_owned())?
            .with_timezone(&Utc);
        b.push(" AND (e.received_at, e.account_id, e.event_id) < (")
            .push_bind(t)
            .push(", ")
            .push_bind(account.to_owned())
            .push(", ")
            .push_bind(id.to_owned())
            .push(")");
    }
    b.push(" ORDER BY e.received_at DESC, e.account_id DESC, e.event_id DESC LIMIT ")
        .push_bind(PAGE as i64 + 1);
    type Raw = (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        DateTime<Utc>,
    );
    let mut raw: Vec<Raw> = b
        .build_query_as()
        .fetch_all(&worker.pool)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "console event list failed");
            "The database did not answer; try again in a moment.".to_owned()
        })?;
    let next = if raw.len() > PAGE {
        raw.truncate(PAGE);
        raw.last()
            .map(|r| {
                format!(
                    "{}|{}|{}",
                    r.7.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    r.1,
                    r.0
                )
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let rows = raw
        .into_iter()
        .map(|r| Row {
            event_id: r.0,
            account_id: r.1,
            event_type: r.2,
            payment_intent_id: r.3,
            status: r.4,
            channel: r.5,
            outcome: r.6,
            received: r.7.into(),
        })
        .collect();
    Ok((rows, next))
}

pub async fn page(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
    q: web::Query<EventQuery>,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let (rows, next, error) = match list(&worker, &q).await {
        Ok((rows, next)) => (rows, next, String::new()),
        Err(e) => (Vec::new(), String::new(), e),
    };
    let echo = |v: &Option<String>| given(v).unwrap_or("").to_owned();
    let next = if next.is_empty() {
        next
    } else {
        let pairs: Vec<(&str, String)> = [
            ("location", echo(&q.location)),
            ("type", echo(&q.event_type)),
            ("status", echo(&q.status)),
            ("channel", echo(&q.channel)),
            ("outcome", echo(&q.outcome)),
            ("from", echo(&q.from)),
            ("to", echo(&q.to)),
            ("q", echo(&q.q)),
            ("after", next),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        format!(
            "/console/events?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    };
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    html(
        status,
        &EventsPage {
            frame: Frame::new(&staff, "events"),
            locations: worker
                .locations
                .current()
                .iter()
                .map(|l| l.id.clone())
                .collect(),
            query: Echo {
                location: echo(&q.location),
                event_type: echo(&q.event_type),
                status: echo(&q.status),
                channel: echo(&q.channel),
                outcome: echo(&q.outcome),
                from: echo(&q.from),
                to: echo(&q.to),
                q: echo(&q.q),
            },
            rows,
            next,
            error,
            took_ms: format!("{:.0}", started.elapsed().as_secs_f64() * 1000.0),
        },
    )
}
