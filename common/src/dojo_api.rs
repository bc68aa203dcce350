//! The one Dojo API client (dojo-api.md §3, §4b, §4c): capability registration in
//! ingress and payment-intent look-ups in the processor go through [`ApiConfig`] (base
//! URL, pinned `version` header, timeouts) and [`DojoApi`] (per-key throttle, retries).
//!
//! - `Authorization: Basic <apiKey>` literally, and `version: DOJO_API_VERSION` on every call;
//! - each key has its own rate limit (GCRA, no burst): retries pass through it too, so
//!   the rate of calls per key never exceeds `DOJO_API_RATE`;
//! - 429 and 5xx are retried with exponential backoff, honouring `Retry-After`; past the
//!   in-call budget the caller gets [`ApiError::Unavailable`] with the wait Dojo asked for
//!   (the processor's outbox keeps the fetch and tries again later);
//! - 401/403 mark the key broken: one error log, a gauge, and calls with that key fail
//!   fast for `DOJO_API_KEY_COOLDOWN_SECS` (no retry storm) before one is tried again;
//!   a replacement key of the location (the locations file changed) is tried at once;
//! - 404 is [`ApiError::NotFound`]: unknown to Dojo (with this key), not "gone".
//!
//! Keys and card fields are never logged: [`Secret`] hides keys, and the `Debug` of
//! [`PaymentDetails`] masks the card and the auth code.

use crate::settings::{or_default, parsed, ConfigError, Secret, Source};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::{IntCounterVec, IntGaugeVec, Registry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Dojo's API base (sandbox and production alike; the key decides).
pub const DEFAULT_API_URL: &str = "https://api.dojo.tech";
/// The dated API version this code speaks (`version` header), unless `DOJO_API_VERSION`.
pub const DEFAULT_API_VERSION: &str = "2024-02-05";

/// How to reach Dojo's API; read once at start.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `DOJO_API_URL`, without a trailing `/`.
    pub url: String,
    /// `DOJO_API_VERSION`.
    pub version: String,
    /// `DOJO_API_TIMEOUT_MS` (default 10 000): the longest one HTTP exchange may take.
    pub timeout: Duration,
    /// `DOJO_API_RATE` (default 10): most calls per second with one key.
    pub rate: NonZeroU32,
    /// `DOJO_API_ATTEMPTS` (default 3): tries within one call on 429/5xx/transport errors.
    pub attempts: u32,
    /// `DOJO_API_MAX_WAIT_MS` (default 5 000): the longest pause between two tries within
    /// one call; a longer `Retry-After` ends the call (the caller reschedules).
    pub max_wait: Duration,
    /// `DOJO_API_KEY_COOLDOWN_SECS` (default 60): calls with a refused key fail fast this long.
    pub key_cooldown: Duration,
}

impl ApiConfig {
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let url = or_default(src, "DOJO_API_URL", DEFAULT_API_URL)
            .trim_end_matches('/')
            .to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError(format!(
                "DOJO_API_URL {url:?} must be an http(s) URL"
            )));
        }
        let version = or_default(src, "DOJO_API_VERSION", DEFAULT_API_VERSION);
        if version.len() != 10 || !version.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(ConfigError(format!(
                "DOJO_API_VERSION {version:?} must be a date, yyyy-mm-dd"
            )));
        }
        let rate = NonZeroU32::new(parsed(src, "DOJO_API_RATE", 10u32)?)
            .ok_or_else(|| ConfigError("DOJO_API_RATE must be at least 1".into()))?;
        Ok(Self {
            url,
            version,
            timeout: crate::settings::millis(src, "DOJO_API_TIMEOUT_MS", 10_000)?,
            rate,
            attempts: parsed(src, "DOJO_API_ATTEMPTS", 3u32)?.max(1),
            max_wait: crate::settings::millis(src, "DOJO_API_MAX_WAIT_MS", 5_000)?,
            key_cooldown: crate::settings::secs(src, "DOJO_API_KEY_COOLDOWN_SECS", 60)?,
        })
    }

    /// The HTTP client every Dojo call uses (timeouts set).
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a client with rustls and timeouts")
    }

    /// The headers of every call: `Authorization: Basic <key>` (literally) and `version`.
    pub fn headers(&self, key: &Secret) -> [(&'static str, String); 2] {
        [
            ("authorization", format!("Basic {}", key.expose())),
            ("version", self.version.clone()),
        ]
    }
}

/// A location's key, named by the location (for metric labels and logs).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub location: String,
    pub key: Secret,
}

/// Why a call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown to Dojo (404)")]
    NotFound,
    #[error("Dojo refused the API key of location {location} ({status})")]
    KeyBroken { location: String, status: u16 },
    /// 429, 5xx or transport failures past the in-call budget; `retry_after`: Dojo's ask.
    #[error("Dojo unavailable ({reason})")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error("Dojo answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("Dojo's answer did not parse: {0}")]
    Decode(String),
}

/// Metrics of the client (registered in the service's registry).
#[derive(Clone)]
pub struct ApiMetrics {
    /// `dojo_api_calls_total{location, operation, status}`: status is the HTTP code,
    /// `transport` (no answer) or `key_broken` (not sent: the key is cooling down).
    pub calls: IntCounterVec,
    /// `dojo_api_key_broken{location}`: 1 while the location's key is refused.
    pub key_broken: IntGaugeVec,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            calls: crate::metrics::counter_vec(
                registry,
                "dojo_api_calls_total",
                "Calls to Dojo's API, by location, operation and answer",
                &["location", "operation", "status"],
            ),
            key_broken: crate::metrics::gauge_vec(
                registry,
                "dojo_api_key_broken",
                "1 while Dojo refuses the location's API key (401/403)",
                &["location"],
            ),
        }
    }
}

/// Throttled, retrying client of Dojo's API; cheap to share (`Arc`).
pub struct DojoApi {
    pub config: ApiConfig,
    http: reqwest::Client,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    /// Location -> which of its keys Dojo refused (a fingerprint, not the key) and until
    /// when that key is considered broken. A new key (the locations file changed) is
    /// tried at once.
    broken: Mutex<HashMap<String, (u64, Instant)>>,
    metrics: ApiMetrics,
}

impl DojoApi {
    pub fn new(config: ApiConfig, metrics: ApiMetrics) -> Self {
        Self {
            http: config.http(),
            config,
            limiters: Mutex::default(),
            broken: Mutex::default(),
            metrics,
        }
    }

    /// `GET /payment-intents/{id}?returnCanceled=true`. The answer is the intent asked
    /// for, with its `id`: an answer for another id (or none) is a `Decode` error, never
    /// stored under the id it names.
    pub async fn get_payment_intent(
        &self,
        creds: &Credentials,
        id: &str,
    ) -> Result<PaymentIntent, ApiError> {
        let path = format!("/payment-intents/{}?returnCanceled=true", encode(id));
        let body = self
            .call(creds, "get", reqwest::Method::GET, &path, None)
            .await?;
        let intent: PaymentIntent =
            serde_json::from_slice(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
        if intent.id.as_deref() != Some(id) {
            return Err(ApiError::Decode(format!(
                "asked for payment intent {id:?}, answered {:?}",
                intent.id
            )));
        }
        Ok(intent)
    }

    /// One page of `POST /payment-intents/search`.
    pub async fn search(
        &self,
        creds: &Credentials,
        request: &SearchRequest,
    ) -> Result<SearchPage, ApiError> {
        let body = serde_json::to_value(request).expect("a search request serialises");
        let answer = self
            .call(
                creds,
                "search",
                reqwest::Method::POST,
                "/payment-intents/search",
                Some(&body),
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// Every page of a search, following the `after` cursor; `visit` sees each page.
    pub async fn search_all(
        &self,
        creds: &Credentials,
        mut request: SearchRequest,
        mut visit: impl FnMut(Vec<PaymentIntent>),
    ) -> Result<usize, ApiError> {
        let mut total = 0;
        loop {
            let page = self.search(creds, &request).await?;
            total += page.data.len();
            let done = page.data.is_empty() || page.after.is_none();
            visit(page.data);
            if done {
                return Ok(total);
            }
            request.cursor.after = page.after;
            request.cursor.before = None;
        }
    }

    fn limiter(&self, location: &str) -> Arc<DefaultDirectRateLimiter> {
        let mut map = self.limiters.lock().expect("limiters lock");
        map.entry(location.to_owned())
            .or_insert_with(|| {
                // No burst: calls of one key are spaced by 1/rate at least.
                Arc::new(RateLimiter::direct(
                    Quota::per_second(self.config.rate).allow_burst(NonZeroU32::MIN),
                ))
            })
            .clone()
    }

    /// Which key a refusal was about, without keeping the key itself.
    fn fingerprint(key: &Secret) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.expose().hash(&mut h);
        h.finish()
    }

    fn key_cooling(&self, creds: &Credentials) -> bool {
        let broken = self.broken.lock().expect("broken lock");
        broken.get(&creds.location).is_some_and(|(key, until)| {
            *key == Self::fingerprint(&creds.key) && Instant::now() < *until
        })
    }

    fn mark_key(&self, creds: &Credentials, status: Option<u16>) {
        let location = creds.location.as_str();
        let mut broken = self.broken.lock().expect("broken lock");
        match status {
            Some(status) => {
                let key = Self::fingerprint(&creds.key);
                let until = Instant::now() + self.config.key_cooldown;
                // Logged once per refused key: a replacement that is refused too is new.
                let was = broken
                    .insert(location.to_owned(), (key, until))
                    .is_some_and(|(before, _)| before == key);
                self.metrics
                    .key_broken
                    .with_label_values(&[location])
                    .set(1);
                if !was {
                    tracing::error!(
                        location,
                        status,
                        "Dojo refuses this location's API key: calls with it pause; replace the key in the locations file"
                    );
                }
            }
            None => {
                if broken.remove(location).is_some() {
                    self.metrics
                        .key_broken
                        .with_label_values(&[location])
                        .set(0);
                    tracing::info!(location, "Dojo accepts this location's API key again");
                }
            }
        }
    }

    /// One logical call: throttle, send, retry 429/5xx/transport with backoff.
    async fn call(
        &self,
        creds: &Credentials,
        operation: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, ApiError> {
        let location = creds.location.as_str();
        let count = |status: &str| {
            self.metrics
                .calls
                .with_label_values(&[location, operation, status])
                .inc()
        };
        let cooling = || {
            let cooling = self.key_cooling(creds);
            if cooling {
                count("key_broken");
            }
            cooling
        };
        let broken = || ApiError::KeyBroken {
            location: location.to_owned(),
            status: 401,
        };
        if cooling() {
            return Err(broken());
        }
        let limiter = self.limiter(location);
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            limiter.until_ready().await;
            // Again after the wait for the key's turn: calls queued behind one that was
            // refused are not sent (a refused key costs one call, not one per fetch).
            if cooling() {
                return Err(broken());
            }
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.config.url));
            for (name, value) in self.config.headers(&creds.key) {
                request = request.header(name, value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let (reason, retry_after) = match request.send().await {
                Err(e) => {
                    count("transport");
                    // Without the URL: it holds an intent id only, but keep logs lean.
                    (format!("transport: {}", e.without_url()), None)
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    count(&status.to_string());
                    match status {
                        200..=299 => {
                            self.mark_key(creds, None);
                            return response.bytes().await.map_err(|e| ApiError::Unavailable {
                                reason: format!("body: {}", e.without_url()),
                                retry_after: None,
                            });
                        }
                        401 | 403 => {
                            self.mark_key(creds, Some(status));
                            return Err(ApiError::KeyBroken {
                                location: location.to_owned(),
                                status,
                            });
                        }
                        404 => return Err(ApiError::NotFound),
                        429 | 500..=599 => (format!("{status}"), retry_after_of(&response)),
                        _ => {
                            let text = response.text().await.unwrap_or_default();
                            return Err(ApiError::Refused {
                                status,
                                detail: text.chars().take(300).collect(),
                            });
                        }
                    }
                }
            };
            let wait = retry_after.unwrap_or(backoff);
            if attempt >= self.config.attempts || wait > self.config.max_wait {
                return Err(ApiError::Unavailable {
                    reason,
                    retry_after,
                });
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.config.max_wait);
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs; treated as absent).
fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Percent-encodes what is not an unreserved URL character (ids are opaque).
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Money: minor units and an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    pub value: i64,
    pub currency_code: String,
}

/// A capture's amount: Dojo's example writes it as a plain integer, Money elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Minor(i64),
    Money(Money),
}

impl Amount {
    pub fn minor(&self) -> i64 {
        match self {
            Self::Minor(v) => *v,
            Self::Money(m) => m.value,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capture {
    pub id: Option<String>,
    pub amount: Option<Amount>,
    pub tips_amount: Option<Amount>,
    pub status: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    /// Masked by Dojo (`************4242`); still never logged.
    pub card_number: Option<String>,
    pub card_type: Option<String>,
    pub expiry_date: Option<String>,
    pub entry_mode: Option<String>,
}

impl Card {
    /// `VISA ****4242`: what is stored and shown (the last four digits at most).
    pub fn summary(&self) -> Option<String> {
        let last4: String = self
            .card_number
            .as_deref()
            .map(|n| {
                let digits: Vec<char> = n.chars().filter(char::is_ascii_digit).collect();
                digits[digits.len().saturating_sub(4)..].iter().collect()
            })
            .unwrap_or_default();
        match (self.card_type.as_deref(), last4.is_empty()) {
            (None, true) => None,
            (Some(t), true) => Some(t.to_owned()),
            (t, false) => Some(format!("{} ****{last4}", t.unwrap_or("card"))),
        }
    }
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("card_type", &self.card_type)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentDetails {
    pub transaction_id: Option<String>,
    pub transaction_date_time: Option<String>,
    pub auth_code: Option<String>,
    pub card: Option<Card>,
}

impl std::fmt::Debug for PaymentDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentDetails")
            .field("transaction_id", &self.transaction_id)
            .field("card", &self.card)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDetails {
    pub external_id: Option<String>,
}

/// A payment intent as Dojo's API serves it (§4b). No field is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntent {
    pub id: Option<String>,
    pub status: Option<String>,
    pub capture_mode: Option<String>,
    pub amount: Option<Money>,
    pub tips_amount: Option<Money>,
    pub total_amount: Option<Money>,
    pub requested_amount: Option<Money>,
    /// Minor units, a plain integer (not Money).
    pub refunded_amount: Option<i64>,
    #[serde(default)]
    pub captures: Vec<Capture>,
    pub reference: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    pub order_details: Option<OrderDetails>,
    pub payment_details: Option<PaymentDetails>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl PaymentIntent {
    pub fn waiter_id(&self) -> Option<&str> {
        self.metadata.get("waiterId").map(String::as_str)
    }

    pub fn order_id(&self) -> Option<&str> {
        self.order_details.as_ref()?.external_id.as_deref()
    }
}

/// The cursor of a search: `limit` 1-100, one of `before`/`after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    pub limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `POST /payment-intents/search` body (§4c).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<String>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub cursor: Cursor,
}

/// One page of a search.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    #[serde(default)]
    pub data: Vec<PaymentIntent>,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"id": "pi_sandbox_RBMHTJ4fIkmSppDILZVCGw", "status": "Captured", "captureMode": "Auto",
 "amount": {"value": 1500, "currencyCode": "GBP"}, "tipsAmount": {"value": 200, "currencyCode": "GBP"},
 "totalAmount": {"value": 1700, "currencyCode": "GBP"}, "refundedAmount": 0,
 "reference": "Order 236", "orderDetails": {"externalId": "ord_4711"}, "metadata": {"waiterId": "42"},
 "captures": [{"id": "cap_1", "amount": 1700, "tipsAmount": 200, "status": "Successful", "createdAt": "2026-05-01T12:00:03Z"}],
 "paymentDetails": {"transactionId": "txn_9", "authCode": "A1B2C3", "card": {"cardNumber": "************4242", "cardType": "VISA"}},
 "createdAt": "2026-05-01T12:00:00Z", "updatedAt": "2026-05-01T12:00:03Z", "somethingNew": 1}"#;

    #[test]
    fn the_documented_example_parses_and_debug_hides_the_card() {
        let pi: PaymentIntent = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(pi.total_amount.as_ref().unwrap().value, 1700);
        assert_eq!(pi.refunded_amount, Some(0));
        assert_eq!(pi.order_id(), Some("ord_4711"));
        assert_eq!(pi.waiter_id(), Some("42"));
        assert_eq!(pi.captures[0].amount.as_ref().unwrap().minor(), 1700);
        let card = pi.payment_details.as_ref().unwrap().card.as_ref().unwrap();
        assert_eq!(card.summary().as_deref(), Some("VISA ****4242"));
        let printed = format!("{pi:?}");
        assert!(
            !printed.contains("4242") && !printed.contains("A1B2C3"),
            "{printed}"
        );
    }

    #[test]
    fn nothing_is_required() {
        let pi: PaymentIntent = serde_json::from_str("{}").unwrap();
        assert_eq!(pi, PaymentIntent::default());
    }

    #[test]
    fn configuration_defaults_and_mistakes() {
        let empty: HashMap<String, String> = HashMap::new();
        let c = ApiConfig::from_source(&empty).unwrap();
        assert_eq!(c.url, DEFAULT_API_URL);
        assert_eq!(c.version, DEFAULT_API_VERSION);
        let key = Secret::new("sk_x");
        assert_eq!(c.headers(&key)[0].1, "Basic sk_x");
        for (name, value) in [
            ("DOJO_API_RATE", "0"),
            ("DOJO_API_VERSION", "latest"),
            ("DOJO_API_URL", "api.dojo.tech"),
        ] {
            let src: HashMap<String, String> = [(name.to_owned(), value.to_owned())].into();
            assert!(ApiConfig::from_source(&src).is_err(), "{name}={value}");
        }
    }

    #[test]
    fn ids_are_encoded() {
        assert_eq!(encode("pi_a-b.c~d"), "pi_a-b.c~d");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
    }
}
