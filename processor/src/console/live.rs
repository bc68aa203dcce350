//! `GET /console/live`: payment updates as they happen, from the payment feed
//! (docs/FEED.md): the page's script follows `GET /console/live/stream`, the feed's
//! Server-Sent Events for every location, authorised by the console session, starting
//! at the current head (and resuming with `Last-Event-ID` after a drop, as tills do).

use super::auth::Staff;
use super::view::{html, Frame};
use crate::Worker;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Template)]
#[template(path = "console/live.html")]
struct LivePage {
    frame: Frame,
    locations: Vec<String>,
    location: String,
}

#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    pub location: Option<String>,
}

pub async fn page(
    staff: Staff,
    worker: web::Data<Arc<Worker>>,
    q: web::Query<LiveQuery>,
) -> HttpResponse {
    html(
        StatusCode::OK,
        &LivePage {
            frame: Frame::new(&staff, "live"),
            locations: worker
                .locations
                .current()
                .iter()
                .map(|l| l.id.clone())
                .collect(),
            location: q.location.clone().unwrap_or_default(),
        },
    )
}

pub async fn stream(
    _staff: Staff,
    req: HttpRequest,
    worker: web::Data<Arc<Worker>>,
    q: web::Query<LiveQuery>,
) -> HttpResponse {
    let filter = crate::feed::store::Filter {
        location: q.location.clone().filter(|l| !l.is_empty()),
        ..Default::default()
    };
    if filter
        .location
        .as_deref()
        .is_some_and(|l| !crate::api::valid_filter(l))
    {
        return super::view::message(
            StatusCode::BAD_REQUEST,
            "A location id is at most 255 bytes, without NUL.",
        );
    }
    let head = match crate::feed::store::head(&worker.pool).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "console live tail: database unavailable");
            return super::view::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database did not answer.",
            );
        }
    };
    crate::feed::routes::open_stream(&req, worker.get_ref(), filter, None, Some(head)).await
}
