//! A till subscribed to the processor's payment feed (docs/FEED.md), as a POS would be:
//! Server-Sent Events with its location's token, resuming with `Last-Event-ID` after
//! any drop. [`TillReport`] says whether every payment's final status reached the till,
//! in order, and how late.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One update as the till received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub seq: i64,
    pub update: Value,
    pub at: Instant,
}

/// Why a subscription ended.
#[derive(Debug)]
pub enum Ended {
    /// The server closed the stream (a cut-off, a restart): resume.
    Closed,
    /// Asked to stop.
    Stopped,
}

/// Splits off the complete events of `buf` (blank-line terminated), returning
/// `(id, data)` of each `payment_update` event; comments and `retry:` are skipped.
pub fn parse_events(buf: &mut String) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut id, mut data, mut kind) = (None, String::new(), None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = Some(v.trim().to_owned());
            }
        }
        if let (Some(id), Some("payment_update")) = (id, kind.as_deref()) {
            out.push((id, data));
        }
    }
    out
}

/// Follows the stream at `url` (`.../v1/payment-updates/stream?...`) once, from
/// `last` (the `Last-Event-ID`), until it ends or `stop`; each update goes to `tx` and
/// moves `last`.
pub async fn subscribe_once(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    last: &mut Option<i64>,
    tx: &mpsc::UnboundedSender<Received>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    let mut req = client.get(url).bearer_auth(token);
    if let Some(id) = *last {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let mut resp = req.send().await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "stream answered {}",
        resp.status()
    );
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c?,
            _ = stop.changed() => return Ok(Ended::Stopped),
        };
        let Some(chunk) = chunk else {
            return Ok(Ended::Closed);
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        for (seq, data) in parse_events(&mut buf) {
            let update = serde_json::from_str(&data)?;
            *last = Some(seq);
            let _ = tx.send(Received {
                seq,
                update,
                at: Instant::now(),
            });
        }
    }
}

/// Follows the stream until `stop`, reconnecting (with `Last-Event-ID`) after any end.
pub async fn follow(
    url: String,
    token: String,
    tx: mpsc::UnboundedSender<Received>,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::new();
    let mut last = None;
    while !*stop.borrow() {
        match subscribe_once(&client, &url, &token, &mut last, &tx, &mut stop).await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Closed) => {}
            Err(e) => {
                tracing::debug!(error = %e, "till stream failed; resuming");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// What one till saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TillReport {
    pub updates: usize,
    /// Payments whose last update carried the expected final status.
    pub final_reached: usize,
    /// Payments expected at this till whose final status never arrived.
    pub missing: Vec<String>,
    /// Updates of another location (must be none).
    pub foreign: usize,
    /// Whether `seq` strictly increased (no duplicate, no reordering).
    pub in_order: bool,
    /// Commit (`committedAt`) to arrival at the till, in milliseconds.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// Checks `received` against `expected` (payment intent → final status) for the till of
/// `location`.
pub fn report(
    location: &str,
    received: &[Received],
    expected: &BTreeMap<String, String>,
    started: (Instant, chrono::DateTime<chrono::Utc>),
) -> TillReport {
    let mut last: HashMap<&str, &str> = HashMap::new();
    let mut latencies = Vec::new();
    let mut r = TillReport {
        updates: received.len(),
        in_order: received.windows(2).all(|w| w[0].seq < w[1].seq),
        ..TillReport::default()
    };
    for u in received {
        if u.update["location"].as_str() != Some(location) {
            r.foreign += 1;
        }
        if let (Some(pi), Some(s)) = (
            u.update["paymentIntentId"].as_str(),
            u.update["status"].as_str(),
        ) {
            last.insert(pi, s);
        }
        let committed = u.update["committedAt"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
        if let Some(c) = committed {
            // Wall clock of arrival, from the monotonic clock and one anchor.
            let arrived =
                started.1 + chrono::Duration::from_std(u.at - started.0).unwrap_or_default();
            latencies.push((arrived - c).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    for (pi, status) in expected {
        if last.get(pi.as_str()) == Some(&status.as_str()) {
            r.final_reached += 1;
        } else {
            r.missing.push(pi.clone());
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    r.latency_p50_ms = pct(0.50);
    r.latency_p99_ms = pct(0.99);
    r
}

/// One till per location, following the feed of the processor at `base_url`.
pub struct Tills {
    tills: Vec<(
        String,
        mpsc::UnboundedReceiver<Received>,
        tokio::task::JoinHandle<()>,
    )>,
    stop: watch::Sender<bool>,
    started: (Instant, chrono::DateTime<chrono::Utc>),
}

impl Tills {
    /// Subscribes `(location, token)` each.
    pub fn start(base_url: &str, tills: &[(String, String)]) -> Self {
        let (stop, stopped) = watch::channel(false);
        let url = format!(
            "{}/v1/payment-updates/stream",
            base_url.trim_end_matches('/')
        );
        let tills = tills
            .iter()
            .map(|(location, token)| {
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(follow(url.clone(), token.clone(), tx, stopped.clone()));
                (location.clone(), rx, task)
            })
            .collect();
        Self {
            tills,
            stop,
            started: (Instant::now(), chrono::Utc::now()),
        }
    }

    /// Waits up to `patience` for every till to hold the final status of each of its
    /// payments (`expected`: location -> intent -> status), then reports per location.
    pub async fn finish(
        mut self,
        expected: &BTreeMap<String, BTreeMap<String, String>>,
        patience: Duration,
    ) -> BTreeMap<String, TillReport> {
        let deadline = Instant::now() + patience;
        let mut got: Vec<Vec<Received>> = self.tills.iter().map(|_| Vec::new()).collect();
        let empty = BTreeMap::new();
        let reports = loop {
            let mut done = true;
            let mut reports = BTreeMap::new();
            for ((location, rx, _), got) in self.tills.iter_mut().zip(&mut got) {
                while let Ok(r) = rx.try_recv() {
                    got.push(r);
                }
                let want = expected.get(location).unwrap_or(&empty);
                let r = report(location, got, want, self.started);
                done &= r.missing.is_empty();
                reports.insert(location.clone(), r);
            }
            if done || Instant::now() >= deadline {
                break reports;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = self.stop.send(true);
        for (_, _, task) in self.tills.drain(..) {
            let _ = task.await;
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines_and_comments_skipped() {
        let mut buf = String::from(
            "retry: 2000\n\n: heartbeat\n\nid: 7\nevent: payment_update\ndata: {\"seq\":7}\n\nid: 8\nevent: pay",
        );
        assert_eq!(parse_events(&mut buf), vec![(7, "{\"seq\":7}".to_owned())]);
        assert_eq!(buf, "id: 8\nevent: pay", "the incomplete event waits");
    }
}
