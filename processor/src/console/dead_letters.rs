//! `GET /console/dead-letters`: what could not be processed, with its reason, attempts,
//! first failure and payload (read without removing anything, as `processor dlq list`).
//! Operators replay one (`POST /console/dead-letters/replay`) or all, after a page that
//! says how many would be replayed and asks to confirm; every replay is audited first.

use super::audit;
use super::auth::Staff;
use super::view::{html, message, Frame};
use crate::dlq::{self, DeadLetter, Selection};
use crate::Worker;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
struct DeadLettersPage {
    frame: Frame,
    letters: Vec<DeadLetter>,
    /// What the queue held: more than `letters` past [`PAGE_ROWS`].
    held: usize,
    error: String,
    done: String,
}

#[derive(Template)]
#[template(path = "console/replay_all.html")]
struct ConfirmPage {
    frame: Frame,
    /// The event ids that would be replayed, one per line (the form sends them back).
    ids: String,
    count: usize,
    /// Dead letters without an event id (unparseable): never replayed from here.
    without_id: usize,
}

#[derive(Debug, Deserialize)]
pub struct Done {
    pub replayed: Option<u64>,
    pub what: Option<String>,
}

/// Most dead letters the page shows (the oldest); the count says how many there are.
const PAGE_ROWS: usize = 200;
/// Most of a payload the page shows (bytes, cut at a character boundary).
const PAGE_PAYLOAD: usize = 4 * 1024;

/// `letters` cut to what the page shows: the oldest [`PAGE_ROWS`], each payload to
/// [`PAGE_PAYLOAD`] bytes followed by a note of the cut.
fn shown(mut letters: Vec<DeadLetter>) -> Vec<DeadLetter> {
    letters.truncate(PAGE_ROWS);
    for d in &mut letters {
        if d.payload.len() > PAGE_PAYLOAD {
            let mut end = PAGE_PAYLOAD;
            while !d.payload.is_char_boundary(end) {
                end -= 1;
            }
            let total = d.payload.len();
            d.payload.truncate(end);
            d.payload.push_str(&format!(
                "… (the first {end} of {total} bytes; `processor dlq list --json` has it all)"
            ));
        }
    }
    letters
}

pub async fn page(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
    done: web::Query<Done>,
) -> HttpResponse {
    let (dlq::Listing { held, letters }, error) = match dlq::list(&worker.settings.amqp_url).await {
        Ok(l) => (l, String::new()),
        Err(e) => (
            dlq::Listing {
                held: 0,
                letters: Vec::new(),
            },
            format!("Cannot read the dead letters ({e:#}); is RabbitMQ up?"),
        ),
    };
    let done = match (done.replayed, &done.what) {
        (Some(n), Some(what)) => format!("Replayed {n} ({what})."),
        (Some(n), None) => format!("Replayed {n}."),
        _ => String::new(),
    };
    html(
        if error.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &DeadLettersPage {
            frame: Frame::new(&staff, "dead-letters"),
            letters: shown(letters),
            held: held as usize,
            error,
            done,
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct ReplayOne {
    pub event_id: String,
}

fn back(replayed: u64, what: &str) -> HttpResponse {
    let query = serde_urlencoded::to_string([
        ("replayed", replayed.to_string()),
        ("what", what.to_owned()),
    ])
    .unwrap_or_default();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/console/dead-letters?{query}")))
        .finish()
}

async fn replay(
    worker: &Worker,
    staff: &Staff,
    selection: Selection,
    target: &str,
) -> HttpResponse {
    if let Err(e) = audit::by(&worker.pool, staff, "replay", target, "requested").await {
        tracing::error!(error = %e, "console audit failed; replay refused");
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Nothing was replayed: the audit could not be written (database unavailable). Try again in a moment.",
        );
    }
    match dlq::replay(&worker.settings.amqp_url, &selection).await {
        Ok(pass) => {
            let n = pass.chosen;
            let _ = audit::by(
                &worker.pool,
                staff,
                "replayed",
                target,
                &format!("{n} replayed"),
            )
            .await;
            tracing::info!(user = %staff.name, target, replayed = n, "console replay");
            back(n, target)
        }
        Err(e) => {
            let _ = audit::by(
                &worker.pool,
                staff,
                "replay failed",
                target,
                &format!("{e:#}"),
            )
            .await;
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("The replay failed ({e:#}); nothing that was not confirmed by RabbitMQ was removed. Try again."),
            )
        }
    }
}

pub async fn replay_one(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
    form: web::Form<ReplayOne>,
) -> Result<HttpResponse, super::auth::Refused> {
    let id = form.event_id.trim();
    if let Err(refused) = staff.operator() {
        let _ = audit::by(
            &worker.pool,
            &staff,
            "replay refused",
            &format!("event {id}"),
            "not an operator",
        )
        .await;
        return Err(refused);
    }
    if id.is_empty() {
        return Ok(message(
            StatusCode::BAD_REQUEST,
            "Which event? The form had no event id.",
        ));
    }
    Ok(replay(
        &worker,
        &staff,
        Selection::EventId(id.to_owned()),
        &format!("event {id}"),
    )
    .await)
}

pub async fn confirm_all(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
) -> Result<HttpResponse, super::auth::Refused> {
    staff.operator()?;
    Ok(match dlq::list(&worker.settings.amqp_url).await {
        Ok(dlq::Listing { letters, .. }) => {
            let ids: std::collections::BTreeSet<String> =
                letters.iter().filter_map(|d| d.event_id.clone()).collect();
            let with_id = letters.iter().filter(|d| d.event_id.is_some()).count();
            html(
                StatusCode::OK,
                &ConfirmPage {
                    frame: Frame::new(&staff, "dead-letters"),
                    ids: ids.into_iter().collect::<Vec<_>>().join("\n"),
                    count: with_id,
                    without_id: letters.len() - with_id,
                },
            )
        }
        Err(e) => message(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Cannot read the dead letters ({e:#}); is RabbitMQ up?"),
        ),
    })
}

#[derive(Debug, Deserialize)]
pub struct ReplayAll {
    /// The count the confirmation page showed.
    pub expected: usize,
    /// The event ids it showed, one per line.
    pub event_ids: String,
}

pub async fn replay_all(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
    form: web::Form<ReplayAll>,
) -> Result<HttpResponse, super::auth::Refused> {
    if let Err(refused) = staff.operator() {
        let _ = audit::by(
            &worker.pool,
            &staff,
            "replay refused",
            "all dead letters",
            "not an operator",
        )
        .await;
        return Err(refused);
    }
    // Those the confirmation page showed: one that died since is not replayed unseen.
    let ids: std::collections::HashSet<String> = form
        .event_ids
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(replay(
        &worker,
        &staff,
        Selection::EventIds(ids),
        &format!("the {} dead letters confirmed", form.expected),
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(n: usize, payload: String) -> DeadLetter {
        DeadLetter {
            event_id: Some(format!("evt_{n}")),
            reason: "not JSON".into(),
            attempts: 0,
            first_failure: None,
            dead_at: None,
            payload,
        }
    }

    #[test]
    fn the_page_shows_the_oldest_rows_and_cuts_long_payloads_at_a_character() {
        let letters: Vec<_> = (0..PAGE_ROWS + 5)
            .map(|n| letter(n, "é".repeat(n * 20)))
            .collect();
        let page = shown(letters);
        assert_eq!(page.len(), PAGE_ROWS);
        assert_eq!(page[0].event_id.as_deref(), Some("evt_0"), "oldest first");
        let short = &page[10].payload;
        assert_eq!(short, &"é".repeat(200), "a short payload is whole");
        let long = &page[PAGE_ROWS - 1].payload;
        let (kept, note) = long.split_once('…').unwrap();
        assert!(kept.len() <= PAGE_PAYLOAD && kept.chars().all(|c| c == 'é'));
        assert!(
            note.contains(&format!("of {} bytes", (PAGE_ROWS - 1) * 40)),
            "{note}"
        );
    }
}
