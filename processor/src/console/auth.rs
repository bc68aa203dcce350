//! Who is using the console: a login (`CONSOLE_USERS`, name and token) that sets a
//! signed session cookie, or the user an SSO proxy names in `CONSOLE_PROXY_USER_HEADER`.
//! Every page takes a [`Staff`]; without one a page redirects to the login form (a
//! stream or a form post answers 401). Replays take [`Staff::operator`].

use super::settings::{ConsoleSettings, Role};
use crate::api::constant_time_eq;
use crate::Worker;
use actix_web::cookie::{time, Cookie, CookieJar, SameSite};
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use std::future::{ready, Ready};
use std::sync::Arc;

/// The session cookie's name.
pub const COOKIE: &str = "dojo_console";

/// A signed-in user of the console.
#[derive(Debug, Clone)]
pub struct Staff {
    pub name: String,
    pub role: Role,
}

impl Staff {
    /// The operator role, or a refusal (403) for a viewer.
    pub fn operator(&self) -> Result<(), Refused> {
        match self.role {
            Role::Operator => Ok(()),
            Role::Viewer => Err(Refused::NotOperator),
        }
    }
}

/// Why a console request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the console is not configured: set CONSOLE_USERS or CONSOLE_PROXY_USER_HEADER (docs/CONSOLE.md)")]
    NotConfigured,
    #[error("sign in first")]
    SignIn { page: bool },
    #[error("this needs the operator role; you are signed in as a viewer")]
    NotOperator,
    #[error("refused: the form did not come from this console")]
    CrossSite,
}

impl ResponseError for Refused {
    fn status_code(&self) -> StatusCode {
        match self {
            Refused::NotConfigured => StatusCode::NOT_FOUND,
            Refused::SignIn { .. } => StatusCode::UNAUTHORIZED,
            Refused::NotOperator | Refused::CrossSite => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Refused::SignIn { page: true } = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/login"))
                .finish();
        }
        super::view::message(self.status_code(), &self.to_string())
    }
}

fn settings(req: &HttpRequest) -> Option<Arc<Worker>> {
    req.app_data::<web::Data<Arc<Worker>>>()
        .map(|w| w.get_ref().clone())
}

/// The session of `req`, if its cookie is valid, unexpired and names a current user
/// (removing a user from `CONSOLE_USERS` ends their sessions at the next restart).
fn from_cookie(console: &ConsoleSettings, req: &HttpRequest) -> Option<Staff> {
    let cookie = req.cookie(COOKIE)?;
    let mut jar = CookieJar::new();
    jar.add_original(cookie);
    let value = jar.signed(&console.key).get(COOKIE)?.value().to_owned();
    let mut parts = value.rsplitn(3, ':');
    let (expires, role, name) = (parts.next()?, parts.next()?, parts.next()?);
    let expires: i64 = expires.parse().ok()?;
    if chrono::Utc::now().timestamp() >= expires {
        return None;
    }
    let user = console.users.iter().find(|u| u.name == name)?;
    (user.role.as_str() == role).then(|| Staff {
        name: user.name.clone(),
        role: user.role,
    })
}

fn from_proxy(console: &ConsoleSettings, req: &HttpRequest) -> Option<Staff> {
    let header = console.proxy_user_header.as_deref()?;
    let name = req.headers().get(header)?.to_str().ok()?.trim();
    if name.is_empty() {
        return None;
    }
    let role = if console.proxy_operators.iter().any(|o| o == name) {
        Role::Operator
    } else {
        Role::Viewer
    };
    Some(Staff {
        name: name.to_owned(),
        role,
    })
}

/// Who `req` is signed in as, if anyone.
pub fn staff(worker: &Worker, req: &HttpRequest) -> Result<Option<Staff>, Refused> {
    let console = &worker.settings.console;
    if !console.enabled() {
        return Err(Refused::NotConfigured);
    }
    Ok(from_proxy(console, req).or_else(|| from_cookie(console, req)))
}

impl FromRequest for Staff {
    type Error = Refused;
    type Future = Ready<Result<Self, Refused>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(worker) = settings(req) else {
            return ready(Err(Refused::NotConfigured));
        };
        let page = req.method() == actix_web::http::Method::GET && !req.path().ends_with("/stream");
        ready(match staff(&worker, req) {
            Ok(Some(staff)) => {
                if req.method() == actix_web::http::Method::POST && cross_site(req) {
                    Err(Refused::CrossSite)
                } else {
                    Ok(staff)
                }
            }
            Ok(None) => Err(Refused::SignIn { page }),
            Err(e) => Err(e),
        })
    }
}

/// Whether a browser says `req` comes from another site (`Sec-Fetch-Site`): forms are
/// accepted from the console itself only (the cookie is also SameSite=Strict).
pub fn cross_site(req: &HttpRequest) -> bool {
    req.headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
}

/// The user whose token matches, comparing every user's token in constant time.
pub fn check_login(console: &ConsoleSettings, name: &str, token: &str) -> Option<Staff> {
    let mut found = None;
    for user in &console.users {
        let name_ok = constant_time_eq(&user.name, name);
        let token_ok = constant_time_eq(user.token.expose(), token);
        if name_ok && token_ok {
            found = Some(Staff {
                name: user.name.clone(),
                role: user.role,
            });
        }
    }
    found
}

/// The signed session cookie for `staff`.
pub fn session_cookie(console: &ConsoleSettings, staff: &Staff) -> Cookie<'static> {
    let expires = chrono::Utc::now().timestamp() + console.session.as_secs() as i64;
    // `name:role:expires` (names hold no `:`, and only characters a cookie may carry).
    let value = format!("{}:{}:{expires}", staff.name, staff.role.as_str());
    let mut jar = CookieJar::new();
    jar.signed_mut(&console.key).add(Cookie::new(COOKIE, value));
    let mut cookie = jar.get(COOKIE).expect("just added").clone();
    cookie.set_path("/console");
    cookie.set_http_only(true);
    cookie.set_same_site(SameSite::Strict);
    cookie.set_secure(console.cookie_secure);
    cookie.set_max_age(time::Duration::seconds(console.session.as_secs() as i64));
    cookie
}

/// A cookie that ends the session.
pub fn logout_cookie() -> Cookie<'static> {
    let mut cookie = Cookie::new(COOKIE, "");
    cookie.set_path("/console");
    cookie.make_removal();
    cookie
}
