//! Every alert rule in `deploy/prometheus/alerts.yml` can fire: each series it reads is
//! really exposed, with the labels it filters or groups on, by ingress, processor or
//! RabbitMQ's Prometheus plugin (`rabbitmq_prometheus`, enabled by `.ci/run`), once the
//! services have done what the rules watch for.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::event::Event;
use simulator::locations;
use simulator::ws::DojoWs;
use simulator::Dojo;
use std::collections::{BTreeMap, BTreeSet};
use support::*;

const RULES: &str = include_str!("../../deploy/prometheus/alerts.yml");
/// Series Prometheus makes itself, not a service.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Series name -> label names seen on it, from Prometheus text pages.
fn exposed(pages: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in pages.iter().flat_map(|p| p.lines()) {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.split_whitespace().next().unwrap_or("");
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let names = out.entry(name.to_owned()).or_default();
        for pair in labels.trim_end_matches('}').split(',') {
            if let Some((label, _)) = pair.split_once('=') {
                names.insert(label.to_owned());
            }
        }
    }
    out
}

/// `(alert, series, label names it filters or groups on)` for every series an alert reads.
fn wanted() -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut expr = String::new();
    let flush = |alert: &str, expr: &mut String, out: &mut Vec<_>| {
        let grouped: BTreeSet<String> = expr
            .split("by (")
            .skip(1)
            .filter_map(|s| s.split(')').next())
            .flat_map(|s| s.split(',').map(|l| l.trim().to_owned()))
            .filter(|l| !l.is_empty() && l != "le")
            .collect();
        let mut rest = expr.as_str();
        while let Some(start) = rest.find(|c: char| c.is_ascii_lowercase()) {
            rest = &rest[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            rest = &rest[end..];
            if !(name.starts_with("dojo_")
                || name.starts_with("rabbitmq_")
                || PROMETHEUS_OWN.contains(&name))
            {
                continue;
            }
            let mut labels = grouped.clone();
            if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
                labels.extend(
                    inner
                        .split(',')
                        .filter_map(|p| Some(p.split_once('=')?.0.trim().to_owned())),
                );
            }
            out.push((alert.to_owned(), name.to_owned(), labels));
        }
        expr.clear();
    };
    let mut in_expr = false;
    for line in RULES.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert:") {
            flush(&alert, &mut expr, &mut out);
            alert = name.trim().to_owned();
            in_expr = false;
        } else if let Some(e) = t.strip_prefix("expr:") {
            expr = e.trim().trim_start_matches('>').to_owned();
            in_expr = true;
        } else if in_expr && !t.contains(':') {
            expr.push(' ');
            expr.push_str(t);
        } else {
            in_expr = false;
        }
    }
    flush(&alert, &mut expr, &mut out);
    out
}

async fn page(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// The value of series `name` carrying every `label="value"` pair of `labels`, if exposed.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        let (series, number) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?.strip_prefix('{')?;
        labels
            .iter()
            .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
            .then(|| number.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_rule_reads_series_the_services_really_expose() {
    let rules = wanted();
    assert!(rules.len() >= 10, "the rules were read: {rules:?}");

    let services = Services::new().await.unwrap();
    let sims = locations::generate(2, 77);
    let file = std::env::temp_dir().join(format!("alerts-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&file, locations::to_toml(&sims, true)).unwrap();
    let ws = DojoWs::bind_keys(
        "127.0.0.1:0",
        Some(sims.iter().map(|l| l.api_key.clone()).collect()),
    )
    .await
    .unwrap();
    let (path, ws_url) = (file.to_string_lossy().into_owned(), ws.url());
    let ingress = ingress(
        &services,
        &[
            ("DOJO_LOCATIONS_FILE", &path),
            ("DOJO_WS_URL", &ws_url),
            ("INGRESS_LOCATIONS_POLL_MS", "100"),
            ("INGRESS_WS_LEASE_RETRY_MS", "200"),
        ],
    );
    // Payment details from the simulator's Dojo API: location 1's key works, location 2's
    // is refused (the key alarm), and a sweep every second.
    let api = simulator::fake_api::FakeDojoApi::start("127.0.0.1:0").unwrap();
    api.serve_truth(
        &Default::default(),
        [(sims[0].api_key.as_str(), sims[0].account_id.as_str())],
    );
    api.refuse_key(&sims[1].api_key);
    let processor = processor(
        &services,
        &[
            ("DOJO_LOCATIONS_FILE", &path),
            ("DOJO_API_URL", &api.url),
            ("SWEEP_INTERVAL", "1s"),
            ("SWEEP_WINDOW", "1h"),
            ("ENRICH_POLL_MS", "50"),
            ("ENRICH_DELAY_MS", "10"),
        ],
    )
    .await;
    ws.wait_for_open(2, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let metrics_url = format!("{}/metrics", ingress.url);

    // The counters an `increase()` rule reads exist at 0 before anything happens: one
    // that first appears at 1 shows Prometheus no increase, and its first (often only)
    // incident would not alert.
    let before = page(&metrics_url).await;
    for location in &sims {
        for channel in ["rest", "webhook", "ws"] {
            let labels = [("location", location.id.as_str()), ("channel", channel)];
            assert_eq!(
                value(&before, "dojo_ingress_wrong_account_total", &labels),
                Some(0.0),
                "{labels:?} in:\n{before}"
            );
        }
    }
    let refused = [("result", "refused")];
    assert_eq!(
        value(&before, "dojo_ingress_locations_reloads_total", &refused),
        Some(0.0)
    );
    let processor_metrics = format!("{}/metrics", processor.running.url);
    let reloads = "dojo_processor_locations_reloads_total";
    assert_eq!(
        value(&page(&processor_metrics).await, reloads, &refused),
        Some(0.0)
    );

    // What the rules watch for: an accepted event, an event of another account, a
    // refused locations file.
    let a = &sims[0];
    let hook = Dojo::new(
        &format!("{}/locations/{}", ingress.url, a.id),
        &a.webhook_secret,
        "u",
        "p",
    );
    let mut event = Event::new(
        "evt_alert_1",
        "payment_intent.created",
        "pi_alert_1",
        "Created",
        Utc::now(),
    );
    event.account_id = a.account_id.clone();
    assert_eq!(hook.webhook(&event.body()).await.unwrap().status(), 200);
    event.account_id = sims[1].account_id.clone();
    event.id = "evt_alert_2".into();
    assert_eq!(hook.webhook(&event.body()).await.unwrap().status(), 401);
    let b = &sims[1];
    let b_hook = Dojo::new(
        &format!("{}/locations/{}", ingress.url, b.id),
        &b.webhook_secret,
        "u",
        "p",
    );
    event.account_id = b.account_id.clone();
    event.id = "evt_alert_3".into();
    event.payment_intent_id = "pi_alert_3".into();
    assert_eq!(b_hook.webhook(&event.body()).await.unwrap().status(), 200);
    let wrong = [("location", a.id.as_str()), ("channel", "webhook")];
    assert_eq!(
        value(
            &page(&metrics_url).await,
            "dojo_ingress_wrong_account_total",
            &wrong
        ),
        Some(1.0)
    );
    let last_sweep = "dojo_processor_sweep_last_success_timestamp_seconds";
    wait_until(
        "the refused key, a completed sweep of location 1 and none of location 2 (0) in the processor's metrics",
        PATIENCE,
        || async {
            let page = page(&processor_metrics).await;
            let swept = |l: &locations::SimLocation| value(&page, last_sweep, &[("location", &l.id)]);
            (page.contains("dojo_api_key_broken{")
                && swept(&sims[0]).is_some_and(|t| t > 0.0)
                && swept(&sims[1]) == Some(0.0))
            .then_some(())
        },
    )
    .await;
    std::fs::write(&file, "[[location]]\nid = \"x\"\n").unwrap();
    wait_until("the broken file refused by both", PATIENCE, || async {
        let ingress_page = page(&metrics_url).await;
        let processor_page = page(&processor_metrics).await;
        (value(
            &ingress_page,
            "dojo_ingress_locations_reloads_total",
            &refused,
        ) == Some(1.0)
            && value(&processor_page, reloads, &refused) == Some(1.0))
        .then_some(())
    })
    .await;
    processor.settled(1).await;

    let rabbit = format!(
        "http://127.0.0.1:15692/metrics/detailed?family=queue_coarse_metrics&vhost={}",
        services.vhost.name
    );
    let broker_page = reqwest::get(&rabbit).await.unwrap_or_else(|e| {
        panic!("RabbitMQ's Prometheus endpoint ({rabbit}): {e}; enable it with `rabbitmq-plugins enable rabbitmq_prometheus` (.ci/run does)")
    });
    let pages = vec![
        page(&metrics_url).await,
        page(&format!("{}/metrics", processor.running.url)).await,
        broker_page.text().await.unwrap(),
    ];
    let seen = exposed(&pages);
    let mut missing = Vec::new();
    for (alert, series, labels) in &rules {
        if PROMETHEUS_OWN.contains(&series.as_str()) {
            continue;
        }
        match seen.get(series) {
            None => missing.push(format!("{alert}: no series {series}")),
            Some(have) => {
                for label in labels.difference(have) {
                    missing.push(format!(
                        "{alert}: {series} has no label {label:?} (has {have:?})"
                    ));
                }
            }
        }
    }
    println!(
        "{} series read by {} alert rules, all exposed",
        rules.len(),
        rules.iter().map(|r| &r.0).collect::<BTreeSet<_>>().len()
    );
    assert!(
        missing.is_empty(),
        "alert rules that can never fire:\n{}",
        missing.join("\n")
    );
    let _ = std::fs::remove_file(&file);
    ingress.stop().await;
    processor.running.stop().await;
}
