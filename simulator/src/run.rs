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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server that answers its first `refusals` requests `status`, then 200 `{}`,
    /// each on its own connection; returns its base URL and how many requests it got.
    async fn answering(refusals: usize, status: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = if n < refusals { status } else { "200 OK" };
                let answer = format!(
                    "HTTP/1.1 {head}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (url, seen)
    }

    fn one_webhook(url: &str) -> (Scenario, Targets, Options) {
        let scenario = crate::scenario::lifecycles("acc_test", 1, 0.0, 1);
        let targets = Targets {
            http: Some(Dojo::new(url, "secret", "u", "p")),
            ..Targets::default()
        };
        let options = Options {
            channels: vec![Via::Webhook],
            rate: None,
            concurrency: 1,
            doubling: 0.0,
            seed: 1,
            timeout: Duration::from_secs(5),
        };
        (scenario, targets, options)
    }

    #[tokio::test]
    async fn a_408_is_sent_again_as_dojo_would_and_other_refusals_are_not() {
        let (url, seen) = answering(1, "408 Request Timeout").await;
        let (scenario, targets, options) = one_webhook(&url);
        let first = scenario.deliveries.len();
        let report = run(&scenario, &targets, &options).await;
        assert_eq!(report.failed, 0, "{:?}", report.failures);
        assert_eq!(report.retried, 1);
        assert_eq!(seen.load(Ordering::SeqCst), first + 1);

        let (url, seen) = answering(usize::MAX, "408 Request Timeout").await;
        let (scenario, targets, options) = one_webhook(&url);
        let report = run(&scenario, &targets, &options).await;
        assert_eq!(report.failed as usize, scenario.deliveries.len());
        assert_eq!(
            seen.load(Ordering::SeqCst),
            scenario.deliveries.len() * (1 + HEAD_TIMEOUT_RETRIES as usize)
        );

        let (url, seen) = answering(1, "503 Service Unavailable").await;
        let (scenario, targets, options) = one_webhook(&url);
        let report = run(&scenario, &targets, &options).await;
        assert_eq!(report.failed, 1);
        assert_eq!(report.retried, 0);
        assert_eq!(seen.load(Ordering::SeqCst), scenario.deliveries.len());
    }
}
