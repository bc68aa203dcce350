//! The load generator: drives ingress over HTTP with correctly signed webhooks and
//! Basic-authenticated REST events, closed-loop at a fixed concurrency or open-loop at
//! a fixed rate, and records ack latencies (HdrHistogram) and errors. Open-loop
//! latencies are measured from each request's scheduled time, so a stall is not hidden
//! (no coordinated omission). Each worker keeps one HTTP/1.1 connection (hyper's
//! client connection, no pool) and sends prepared requests, so the generator takes as
//! little of the machine's two cores as it can.

use crate::stats::{histogram, record};
use base64::Engine as _;
use hdrhistogram::Histogram;
use simulator::Event;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One prepared request (signed once, before the clock starts).
pub struct Prepared {
    pub event_id: String,
    pub body: bytes::Bytes,
    pub webhook: bool,
    pub auth: String,
}

/// Bodies for `deliveries`, a share of them as REST, the rest as signed webhooks.
pub fn prepare(
    deliveries: &[Event],
    secret: &str,
    user: &str,
    password: &str,
    rest_every: usize,
) -> Vec<Prepared> {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    deliveries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let body = e.body();
            let webhook = rest_every == 0 || i % rest_every != 0;
            let auth = if webhook {
                common::signature::sign(secret, body.as_bytes())
            } else {
                basic.clone()
            };
            Prepared {
                event_id: e.id.clone(),
                body: body.into(),
                webhook,
                auth,
            }
        })
        .collect()
}

pub enum Mode {
    Closed { concurrency: usize },
    Open { rate: f64 },
}

pub struct Report {
    /// One entry per second of the run, by when each request was answered.
    pub per_second: Vec<Second>,
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    /// When each delivery was acknowledged (200), by index.
    pub acked_at: Vec<Option<SystemTime>>,
}

/// What one second of a run saw: answers (200) and errors completed in it, and the
/// acknowledgement latency of its answers, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Second {
    /// Seconds since the run started (0 is the first).
    pub second: usize,
    pub ok: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Buckets `(second, latency or None for an error)` samples into [`Second`]s.
fn per_second(samples: &[(usize, Option<Duration>)]) -> Vec<Second> {
    let seconds = samples.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
    let mut buckets: Vec<(Histogram<u64>, usize)> =
        (0..seconds).map(|_| (histogram(), 0)).collect();
    for (second, latency) in samples {
        match latency {
            Some(l) => record(&mut buckets[*second].0, *l),
            None => buckets[*second].1 += 1,
        }
    }
    let ms = |v: u64| v as f64 / 1000.0;
    buckets
        .into_iter()
        .enumerate()
        .map(|(second, (h, errors))| Second {
            second,
            ok: h.len() as usize,
            errors,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
        .collect()
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn connect(addr: &str) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// Sends one request on the worker's connection (reconnecting if it was closed).
async fn send(sender: &mut Option<Sender>, addr: &str, p: &Prepared) -> bool {
    use http_body_util::BodyExt;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await;
    }
    let Some(s) = sender.as_mut() else {
        return false;
    };
    if s.ready().await.is_err() {
        *sender = None;
        return false;
    }
    let (path, header) = if p.webhook {
        ("/v1/webhooks/dojo", "dojo-signature")
    } else {
        ("/v1/events", "authorization")
    };
    let request = hyper::Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .header(header, p.auth.as_str())
        .body(http_body_util::Full::new(p.body.clone()))
        .expect("valid request");
    match s.send_request(request).await {
        Ok(response) => {
            let ok = response.status() == 200;
            let _ = response.into_body().collect().await;
            ok
        }
        Err(_) => {
            *sender = None;
            false
        }
    }
}

pub async fn run(url: &str, requests: Arc<Vec<Prepared>>, mode: Mode) -> Report {
    let addr = url.trim_start_matches("http://").to_owned();
    let acked = Arc::new(Mutex::new(vec![None; requests.len()]));
    let latency = Arc::new(Mutex::new(histogram()));
    let samples = Arc::new(Mutex::new(Vec::with_capacity(requests.len())));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = match mode {
        Mode::Closed { concurrency } => concurrency,
        // Enough workers that a slow answer never delays the next scheduled request.
        Mode::Open { .. } => 512,
    };
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (addr, requests, acked, latency, samples, errors, next) = (
                addr.clone(),
                requests.clone(),
                acked.clone(),
                latency.clone(),
                samples.clone(),
                errors.clone(),
                next.clone(),
            );
            let rate = match mode {
                Mode::Open { rate } => Some(rate),
                Mode::Closed { .. } => None,
            };
            tokio::spawn(async move {
                let mut local = histogram();
                let mut seen = Vec::new();
                let mut sender = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests.len() {
                        break;
                    }
                    let scheduled = match rate {
                        Some(rate) => {
                            let at = started + Duration::from_secs_f64(i as f64 / rate);
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    let ok = send(&mut sender, &addr, &requests[i]).await;
                    let second = started.elapsed().as_secs() as usize;
                    if ok {
                        let took = scheduled.elapsed();
                        record(&mut local, took);
                        seen.push((second, Some(took)));
                        acked.lock().unwrap()[i] = Some(SystemTime::now());
                    } else {
                        seen.push((second, None));
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latency.lock().unwrap().add(&local).ok();
                samples.lock().unwrap().extend(seen);
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let errors = errors.load(Ordering::Relaxed);
    let latency = latency.lock().unwrap().clone();
    let acked_at = acked.lock().unwrap().clone();
    let per_second = per_second(&samples.lock().unwrap());
    Report {
        per_second,
        sent: requests.len(),
        ok: requests.len() - errors,
        errors,
        elapsed,
        latency,
        acked_at,
    }
}
