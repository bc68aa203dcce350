//! The ops console (docs/CONSOLE.md): server-rendered pages for support staff, served by
//! the processor's HTTP server under `/console` (the serving side; see README "Which
//! process does what"). Templates are askama's (`processor/templates/console/`, checked
//! at compile time); the only script is `assets/console.js` (times in the browser's
//! zone, the live tail), shipped in the binary, nothing loaded from the internet.
//!
//! - [`auth`]: sign-in (`CONSOLE_USERS`) or an SSO proxy's header; roles `viewer` and
//!   `operator`; [`audit`]: who did what;
//! - [`overview`], [`events`], [`payment`], [`dead_letters`], [`live`]: the views.

pub mod audit;
pub mod auth;
pub mod dead_letters;
pub mod events;
pub mod live;
pub mod overview;
pub mod payment;
pub mod settings;
pub mod view;

use crate::Worker;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use auth::Staff;
use serde::Deserialize;
use std::sync::Arc;
use view::{html, Frame, When};

/// The console's routes, under `/console`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            // The bulk replay's form carries every event id it confirms (up to 10,000).
            .app_data(web::FormConfig::default().limit(1 << 20))
            .route("", web::get().to(overview::page))
            .route("/", web::get().to(overview::page))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/events", web::get().to(events::page))
            .route("/payments/{id}", web::get().to(payment::page))
            .route("/dead-letters", web::get().to(dead_letters::page))
            .route(
                "/dead-letters/replay",
                web::post().to(dead_letters::replay_one),
            )
            .route(
                "/dead-letters/replay-all",
                web::get().to(dead_letters::confirm_all),
            )
            .route(
                "/dead-letters/replay-all",
                web::post().to(dead_letters::replay_all),
            )
            .route("/live", web::get().to(live::page))
            .route("/live/stream", web::get().to(live::stream))
            .route("/audit", web::get().to(audit_page))
            .route("/assets/console.css", web::get().to(css))
            .route("/assets/console.js", web::get().to(js)),
    );
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("cache-control", "max-age=300"))
        .body(include_str!("assets/console.css"))
}

async fn js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "max-age=300"))
        .body(include_str!("assets/console.js"))
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage<'a> {
    error: &'a str,
}

async fn login_form(req: HttpRequest, worker: web::Data<Arc<Worker>>) -> HttpResponse {
    match auth::staff(&worker, &req) {
        Err(e) => view::message(StatusCode::NOT_FOUND, &e.to_string()),
        // Already signed in (a session, or the SSO proxy): straight to the console.
        Ok(Some(_)) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/console"))
            .finish(),
        // Behind an SSO proxy only: there is no login of our own to offer.
        Ok(None) if worker.settings.console.users.is_empty() => view::message(
            StatusCode::UNAUTHORIZED,
            "Sign in through the company's SSO proxy: this console has no logins of its own, and this request did not come through the proxy.",
        ),
        Ok(None) => html(StatusCode::OK, &LoginPage { error: "" }),
    }
}

#[derive(Deserialize)]
struct Login {
    name: String,
    token: String,
}

async fn login(
    req: HttpRequest,
    worker: web::Data<Arc<Worker>>,
    form: web::Form<Login>,
) -> HttpResponse {
    let console = &worker.settings.console;
    if !console.enabled() {
        return view::message(
            StatusCode::NOT_FOUND,
            &auth::Refused::NotConfigured.to_string(),
        );
    }
    if auth::cross_site(&req) {
        return view::message(StatusCode::FORBIDDEN, &auth::Refused::CrossSite.to_string());
    }
    let name = form.name.trim();
    match auth::check_login(console, name, &form.token) {
        Some(staff) => {
            if let Err(e) = audit::by(&worker.pool, &staff, "sign in", "", "").await {
                tracing::error!(error = %e, "console audit failed; sign-in refused");
                return view::message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Cannot sign in: the database is unavailable. Try again in a moment.",
                );
            }
            HttpResponse::SeeOther()
                .cookie(auth::session_cookie(console, &staff))
                .insert_header((header::LOCATION, "/console"))
                .finish()
        }
        None => {
            // The name as typed (bounded), never the token.
            let shown: String = name.chars().take(64).collect();
            let _ = audit::record(&worker.pool, &shown, "", "sign in refused", "", "").await;
            html(
                StatusCode::UNAUTHORIZED,
                &LoginPage {
                    error: "Wrong name or token.",
                },
            )
        }
    }
}

async fn logout(staff: Staff, worker: web::Data<Arc<Worker>>) -> HttpResponse {
    let _ = audit::by(&worker.pool, &staff, "sign out", "", "").await;
    HttpResponse::SeeOther()
        .cookie(auth::logout_cookie())
        .insert_header((header::LOCATION, "/console/login"))
        .finish()
}

pub struct AuditRow {
    pub at: When,
    pub entry: audit::Entry,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    frame: Frame,
    rows: Vec<AuditRow>,
}

async fn audit_page(staff: Staff, worker: web::Data<Arc<Worker>>) -> HttpResponse {
    match audit::latest(&worker.pool, 500).await {
        Ok(entries) => html(
            StatusCode::OK,
            &AuditPage {
                frame: Frame::new(&staff, "audit"),
                rows: entries
                    .into_iter()
                    .map(|entry| AuditRow {
                        at: entry.at.into(),
                        entry,
                    })
                    .collect(),
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "console audit query failed");
            view::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database did not answer; try again in a moment.",
            )
        }
    }
}
