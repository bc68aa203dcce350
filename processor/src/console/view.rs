//! What every console page shares: rendering a template into a response, times (shown
//! in the browser's zone by `console.js`, UTC on hover) and amounts with their currency.

use super::auth::Staff;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use askama::Template;
use chrono::{DateTime, SecondsFormat, Utc};

/// The page's frame: who is signed in, and which tab is current.
pub struct Frame {
    pub user: String,
    pub role: &'static str,
    pub operator: bool,
    pub tab: &'static str,
}

impl Frame {
    pub fn new(staff: &Staff, tab: &'static str) -> Self {
        Self {
            user: staff.name.clone(),
            role: staff.role.as_str(),
            operator: staff.role == super::settings::Role::Operator,
            tab,
        }
    }
}

/// Renders `page` as an HTML answer with `status`.
pub fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            // Pages may hold payment data: never cached by the browser or a proxy.
            .insert_header(("cache-control", "no-store"))
            .insert_header(("x-frame-options", "DENY"))
            .insert_header((
                "content-security-policy",
                "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ))
            .body(body),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            HttpResponse::InternalServerError().body("the console could not render this page")
        }
    }
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage<'a> {
    text: &'a str,
}

/// A page that only says `text` (an error, a refusal, what to do).
pub fn message(status: StatusCode, text: &str) -> HttpResponse {
    html(status, &MessagePage { text })
}

/// A moment: ISO 8601 for the browser to show in its zone, and UTC as text.
#[derive(Debug, Clone)]
pub struct When {
    pub iso: String,
    pub utc: String,
}

impl From<DateTime<Utc>> for When {
    fn from(t: DateTime<Utc>) -> Self {
        Self {
            iso: t.to_rfc3339_opts(SecondsFormat::Millis, true),
            utc: t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        }
    }
}

/// Digits after the decimal point of an ISO 4217 currency (its minor unit): Dojo's
/// amounts are integers in minor units (dojo-api.md §4b).
pub fn minor_unit_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "ISK" | "CLP" | "VND" | "XOF" | "XAF" | "UGX" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}

/// An amount in minor units shown with its currency: `GBP 12.34`; `—` when unknown.
pub fn money(value: Option<i64>, currency: Option<&str>) -> String {
    let Some(value) = value else {
        return "—".into();
    };
    let currency = currency.unwrap_or("");
    let digits = minor_unit_digits(currency);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let text = if digits == 0 {
        abs.to_string()
    } else {
        let scale = 10u64.pow(digits);
        format!(
            "{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = digits as usize
        )
    };
    format!("{currency} {sign}{text}").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_uses_the_currency_minor_unit() {
        assert_eq!(money(Some(1234), Some("GBP")), "GBP 12.34");
        assert_eq!(money(Some(5), Some("EUR")), "EUR 0.05");
        assert_eq!(money(Some(-250), Some("GBP")), "GBP -2.50");
        assert_eq!(money(Some(1234), Some("JPY")), "JPY 1234");
        assert_eq!(money(Some(1234), Some("KWD")), "KWD 1.234");
        assert_eq!(money(None, Some("GBP")), "—");
    }
}
