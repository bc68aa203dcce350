//! Checks a run's outcome through the processor's read API: every payment intent must
//! reach its expected final status (waiting, with a deadline, for processing to finish).

use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Serialize)]
pub struct Verification {
    pub checked: usize,
    pub matched: usize,
    /// `(payment intent, expected, actual)` for those that did not match in time.
    pub mismatched: Vec<(String, String, String)>,
}

async fn status_of(http: &reqwest::Client, base: &str, token: &str, pi: &str) -> Option<String> {
    let response = http
        .get(format!("{base}/v1/payment-intents/{pi}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    body.get("status")?.as_str().map(str::to_owned)
}

/// Polls each intent until it shows its expected status or `timeout` passes.
pub async fn verify(
    api_url: &str,
    token: &str,
    expected: &HashMap<String, String>,
    timeout: Duration,
) -> Verification {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    let results: Vec<(String, String, String)> = futures::stream::iter(expected.iter())
        .map(|(pi, want)| {
            let http = &http;
            async move {
                loop {
                    let got = status_of(http, api_url, token, pi)
                        .await
                        .unwrap_or_else(|| "missing".into());
                    if &got == want || Instant::now() >= deadline {
                        return (pi.clone(), want.clone(), got);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut v = Verification {
        checked: results.len(),
        ..Verification::default()
    };
    for (pi, want, got) in results {
        if want == got {
            v.matched += 1;
        } else {
            v.mismatched.push((pi, want, got));
        }
    }
    v
}
