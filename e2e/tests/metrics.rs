//! `/metrics` on both services moves by exactly what a batch did.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use simulator::Event;
use std::collections::BTreeMap;
use support::*;

/// Every sample of a Prometheus text page: (name, sorted labels) -> value.
fn parse(page: &str) -> BTreeMap<(String, String), f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let mut pairs: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                    pairs.sort();
                    (n.to_owned(), pairs.join(","))
                }
                None => (series.to_owned(), String::new()),
            };
            Some(((name, labels), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(url: &str) -> BTreeMap<(String, String), f64> {
    parse(
        &reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
}

fn value(page: &BTreeMap<(String, String), f64>, name: &str, labels: &str) -> f64 {
    page.get(&(name.to_owned(), labels.to_owned()))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_move_by_what_a_batch_did() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    // Warm up so every series exists, then take the "before" pages.
    let warm = Event::new(
        "evt_warm",
        "payment_intent.created",
        "pi_warm",
        "Created",
        Utc::now(),
    );
    assert_eq!(dojo.webhook(&warm.body()).await.unwrap().status(), 200);
    processor.settled(1).await;
    let (ing0, proc0) = (
        scrape(&ingress.url).await,
        scrape(&processor.running.url).await,
    );

    // The batch: 10 new events over webhook, 4 of them again over REST, 1 invalid.
    let events: Vec<Event> = (0..10)
        .map(|i| {
            Event::new(
                &format!("evt_m_{i}"),
                "payment_intent.created",
                &format!("pi_m_{i}"),
                "Created",
                Utc::now(),
            )
        })
        .collect();
    for e in &events {
        assert_eq!(dojo.webhook(&e.body()).await.unwrap().status(), 200);
    }
    processor.settled(11).await;
    for e in &events[..4] {
        assert_eq!(dojo.rest(&e.body()).await.unwrap().status(), 200);
    }
    assert_eq!(
        dojo.webhook("{\"not\":\"an event\"}")
            .await
            .unwrap()
            .status(),
        400
    );
    processor.settled(15).await;
    let (ing1, proc1) = (
        scrape(&ingress.url).await,
        scrape(&processor.running.url).await,
    );

    let d = |a: &BTreeMap<_, _>, b: &BTreeMap<_, _>, name: &str, labels: &str| {
        value(b, name, labels) - value(a, name, labels)
    };
    let received = "dojo_ingress_events_received_total";
    assert_eq!(
        d(
            &ing0,
            &ing1,
            received,
            "answer=\"accepted\",channel=\"webhook\",location=\"default\""
        ),
        10.0
    );
    assert_eq!(
        d(
            &ing0,
            &ing1,
            received,
            "answer=\"accepted\",channel=\"rest\",location=\"default\""
        ),
        4.0
    );
    assert_eq!(
        d(
            &ing0,
            &ing1,
            received,
            "answer=\"invalid\",channel=\"webhook\",location=\"default\""
        ),
        1.0
    );
    let ack = "dojo_ingress_ack_latency_seconds_count";
    assert_eq!(
        d(&ing0, &ing1, ack, "answer=\"accepted\",channel=\"webhook\""),
        10.0
    );
    assert_eq!(
        d(
            &ing0,
            &ing1,
            "dojo_ingress_publish_confirm_seconds_count",
            ""
        ),
        14.0
    );
    assert_eq!(value(&ing1, "dojo_ingress_broker_connected", ""), 1.0);

    let events_total = "dojo_processor_events_total";
    assert_eq!(d(&proc0, &proc1, events_total, "outcome=\"applied\""), 10.0);
    assert_eq!(
        d(&proc0, &proc1, events_total, "outcome=\"duplicate\""),
        4.0
    );
    assert_eq!(
        d(
            &proc0,
            &proc1,
            "dojo_processor_dedupe_hits_total",
            "layer=\"redis\""
        ),
        4.0
    );
    assert_eq!(
        d(
            &proc0,
            &proc1,
            "dojo_processor_processing_seconds_count",
            ""
        ),
        14.0
    );
    assert_eq!(
        d(
            &proc0,
            &proc1,
            "dojo_processor_end_to_end_lag_seconds_count",
            ""
        ),
        10.0
    );
    assert!(
        d(
            &proc0,
            &proc1,
            "dojo_processor_end_to_end_lag_seconds_sum",
            ""
        ) > 0.0
    );
    assert_eq!(value(&proc1, "dojo_processor_consuming", ""), 1.0);
    ingress.stop().await;
    processor.running.stop().await;
}
