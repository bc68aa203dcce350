//! `createdAt` far from today: outside the accepted range (1970-01-01 up to 2262-01-01)
//! it is refused (400, or `InvalidRequest` over the WebSocket), never saturated into a
//! tie; inside, the later instant wins to the nanosecond, and `status_changed_at` is the
//! `createdAt` of the event that set the status.

mod support;

use chrono::{DateTime, Utc};
use common::topology::PROCESSOR_QUEUE;
use e2e::isolation::Services;
use e2e::wait_until;
use serde_json::Value;
use simulator::event::Event;
use simulator::ws::{error_type, DojoWs};
use std::time::Duration;
use support::*;

const UPDATED: &str = "payment_intent.status_updated";

/// A status update of `pi` with `createdAt` written exactly as `at`.
fn update(id: &str, pi: &str, status: &str, at: &str) -> String {
    let body = Event::new(id, UPDATED, pi, status, Utc::now()).body();
    let mut v: Value = serde_json::from_str(&body).unwrap();
    v["createdAt"] = at.into();
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_dates_are_refused_on_every_channel() {
    let services = Services::new().await.unwrap();
    const KEY: &str = "sk_sandbox_far_dates";
    let ws = DojoWs::bind("127.0.0.1:0", Some(KEY.into())).await.unwrap();
    let ingress = ingress(
        &services,
        &[("DOJO_WS_URL", &ws.url()), ("DOJO_API_KEY", KEY)],
    );
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    // The reported pair (2263 Refunded, 2300 Captured), the years before 1677 that
    // saturated the other way, and the edges of the range.
    let refused = [
        ("Refunded", "2263-01-01T00:00:00Z"),
        ("Captured", "2300-01-01T00:00:00Z"),
        ("Captured", "1400-01-01T00:00:00Z"),
        ("Refunded", "1500-01-01T00:00:00Z"),
        ("Captured", "2262-01-01T00:00:00Z"),
        ("Captured", "9999-12-31T23:59:59.9999999Z"),
        ("Captured", "1969-12-31T23:59:59.9999999Z"),
        ("Captured", "0001-01-01T00:00:00+00:00"),
        ("Captured", "2261-12-31T23:00:00-01:00"),
    ];
    for (i, (status, at)) in refused.iter().enumerate() {
        let body = update(&format!("evt_far_{i}"), "pi_far", status, at);
        for response in [dojo.webhook(&body).await, dojo.rest(&body).await] {
            let response = response.unwrap();
            assert_eq!(response.status(), 400, "{at}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["errorType"], "InvalidRequest");
            assert!(
                error["debugMessage"]
                    .as_str()
                    .unwrap()
                    .contains("outside the accepted range"),
                "{error}"
            );
        }
        // Over the WebSocket (HandleEventV1): the same refusal, as a JSON-RPC error.
        let reply = ws
            .handle_event(&body, None, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(error_type(&reply), Some("InvalidRequest"), "{at}: {reply}");
    }
    assert_eq!(
        services
            .vhost
            .ready_messages(PROCESSOR_QUEUE)
            .await
            .unwrap(),
        0
    );
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_edges_of_the_range_the_later_instant_wins_and_is_recorded() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    // (intent, the later event, the earlier one): the earlier one is sent last and
    // has the later lifecycle stage, so only the instant can decide.
    let cases = [
        (
            "pi_end",
            ("Captured", "2261-12-31T23:59:59.9999999Z"),
            ("Refunded", "2261-12-31T23:59:59.9999998Z"),
        ),
        (
            "pi_far_apart",
            ("Authorized", "2261-06-01T00:00:00Z"),
            ("Canceled", "2100-06-01T00:00:00Z"),
        ),
        (
            "pi_epoch",
            ("Created", "1970-01-01T00:00:00.0000001Z"),
            ("Reversed", "1970-01-01T00:00:00Z"),
        ),
        (
            "pi_offset",
            ("Authorized", "2200-01-01T00:00:00.5+14:00"),
            ("Captured", "2199-12-31T09:59:59.4999999Z"),
        ),
    ];
    let mut sent = 0;
    for (pi, later, earlier) in &cases {
        for (n, (status, at)) in [later, earlier].iter().enumerate() {
            let body = update(&format!("evt_{pi}_{n}"), pi, status, at);
            assert_eq!(dojo.rest(&body).await.unwrap().status(), 200, "{at}");
            sent += 1;
            processor.settled(sent).await;
        }
    }
    let pool = services.db.pool().await.unwrap();
    for (pi, (status, at), _) in &cases {
        let record = wait_until(pi, PATIENCE, || intent(&pool, pi)).await;
        assert_eq!(&record.status, status, "{pi}");
        assert_eq!(record.last_event_id, format!("evt_{pi}_0"));
        let changed: DateTime<Utc> = sqlx::query_scalar(
            "SELECT status_changed_at FROM payment_intents WHERE payment_intent_id = $1",
        )
        .bind(pi)
        .fetch_one(&pool)
        .await
        .unwrap();
        let at = DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc);
        // PostgreSQL keeps microseconds: the createdAt, truncated to them.
        assert_eq!(changed.timestamp_micros(), at.timestamp_micros(), "{pi}");
        let outcomes = events_of(&pool, pi).await;
        assert!(outcomes.iter().any(|e| e.2 == "stale"), "{outcomes:?}");
    }
    processor.running.stop().await;
    ingress.stop().await;
}
