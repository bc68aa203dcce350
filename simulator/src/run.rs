//! Drives a scenario into an ingress over the chosen channels, open-loop at a rate or as
//! fast as a concurrency allows, and reports what was sent and acknowledged.

use crate::client::Dojo;
use crate::event::Event;
use crate::scenario::Scenario;
use crate::ws::{error_type, is_success, DojoWs};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Webhook,
    Rest,
}

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ws" => Ok(Self::Ws),
            "webhook" => Ok(Self::Webhook),
            "rest" => Ok(Self::Rest),
            other => Err(format!("unknown channel {other:?} (ws, webhook, rest)")),
        }
    }
}

/// Where deliveries go: an event of an account in `locations` goes through that
/// location's socket and routes; any other event through `ws` and `http` as they are.
#[derive(Clone, Default)]
pub struct Targets {
    pub ws: Option<DojoWs>,
    pub http: Option<Dojo>,
    /// By `accountId`.
    pub locations: HashMap<String, LocationTarget>,
}

/// One location's way in: its socket (by API key) and its own HTTP routes.
#[derive(Clone, Default)]
pub struct LocationTarget {
    pub ws_key: Option<String>,
    pub http: Option<Dojo>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub channels: Vec<Via>,
    /// Deliveries per second; `None`: as fast as `concurrency` allows.
    pub rate: Option<f64>,
    pub concurrency: usize,
    /// Fraction of deliveries also sent over a second channel.
    pub doubling: f64,
    pub seed: u64,
    pub timeout: Duration,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ChannelReport {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Deliveries sent again after a `408 Request Timeout` (see [`HEAD_TIMEOUT_RETRIES`]).
    pub retried: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub distinct_events: usize,
    pub intents: usize,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Deliveries sent again after a `408 Request Timeout`, all channels.
    pub retried: u64,
    pub seconds: f64,
    pub channels: BTreeMap<Via, ChannelReport>,
    /// The first few failures, for the reader.
    pub failures: Vec<String>,
}

/// How many times an HTTP delivery answered `408 Request Timeout` is sent again.
///
/// Ingress answers 408 when a request's head has not been read within 5 s of the
/// connection being accepted; on a saturated machine that can reach a request that was
/// sent at once (actix-web issue #1269). Nothing was accepted then, and Dojo retries any
/// 4xx "a limited number of times" (`dojo-api.md` §2b), so the simulator does too for
/// this one status. Other refusals (401, 503, ...) are reported as failures at once.
pub const HEAD_TIMEOUT_RETRIES: u32 = 2;

/// Delivers `event` once over `via`; `Ok(n)` is the number of 408 retries it took.
async fn deliver(
    targets: &Targets,
    via: Via,
    event: &Event,
    timeout: Duration,
) -> Result<u32, String> {
    let body = event.body();
    let location = targets.locations.get(&event.account_id);
    match via {
        Via::Ws => {
            let ws = targets.ws.as_ref().ok_or("no WebSocket endpoint")?;
            let reply = match location.and_then(|l| l.ws_key.as_deref()) {
                Some(key) => ws.handle_event_on(key, &body, timeout).await,
                None => ws.handle_event(&body, None, timeout).await,
            }
            .map_err(|e| e.to_string())?;
            if is_success(&reply) {
                Ok(0)
            } else {
                Err(format!(
                    "ws {}: {}",
                    error_type(&reply).unwrap_or("bad reply"),
                    reply
                ))
            }
        }
        Via::Webhook | Via::Rest => {
            let http = location
                .and_then(|l| l.http.as_ref())
                .or(targets.http.as_ref())
                .ok_or("no ingress URL")?;
            let mut retries = 0;
            loop {
                let sent = if via == Via::Webhook {
                    http.webhook(&body).await
                } else {
                    http.rest(&body).await
                };
                let response = sent.map_err(|e| e.to_string())?;
                let status = response.status();
                if status.is_success() {
                    return Ok(retries);
                }
                if status == reqwest::StatusCode::REQUEST_TIMEOUT && retries < HEAD_TIMEOUT_RETRIES
                {
                    retries += 1;
                    continue;
                }
                return Err(format!(
                    "{via:?} {status}: {}",
                    response.text().await.unwrap_or_default()
                ));
            }
        }
    }
}

/// Sends every delivery of `scenario` and waits for every answer.
pub async fn run(scenario: &Scenario, targets: &Targets, options: &Options) -> Report {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let channels = &options.channels;
    let mut jobs: Vec<(Via, &Event)> = Vec::new();
    for event in &scenario.deliveries {
        let first = channels[rng.random_range(0..channels.len())];
        jobs.push((first, event));
        if channels.len() > 1 && rng.random_bool(options.doubling) {
            let others: Vec<Via> = channels.iter().copied().filter(|c| *c != first).collect();
            jobs.push((others[rng.random_range(0..others.len())], event));
        }
    }
    let start = Instant::now();
    let results: Vec<(Via, Result<u32, String>)> =
        futures::stream::iter(jobs.into_iter().enumerate())
            .map(|(i, (via, event))| async move {
                if let Some(rate) = options.rate {
                    tokio::time::sleep_until(
                        (start + Duration::from_secs_f64(i as f64 / rate)).into(),
                    )
                    .await;
                }
                (via, deliver(targets, via, event, options.timeout).await)
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
    let mut report = Report {
        distinct_events: scenario.distinct,
        intents: scenario.expected.len(),
        seconds: start.elapsed().as_secs_f64(),
        ..Report::default()
    };
    for (via, result) in results {
        let channel = report.channels.entry(via).or_default();
        channel.sent += 1;
        report.sent += 1;
        match result {
            Ok(retries) => {
                channel.acknowledged += 1;
                report.acknowledged += 1;
                channel.retried += u64::from(retries);
                report.retried += u64::from(retries);
            }
            Err(e) => {
                channel.failed += 1;
                report.failed += 1;
                if report.failures.len() < 10 {
                    report.failures.push(e);
                }
            }
        }
    }
    report
}
