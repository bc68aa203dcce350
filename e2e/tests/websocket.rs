//! The WebSocket channel end to end: the simulator plays Dojo's WebSocket endpoint,
//! ingress connects to it as a POS would, and events land in the payment tables.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use e2e::wait_until;
use serde_json::json;
use simulator::event::Event;
use simulator::run::{Options, Targets, Via};
use simulator::ws::Message;
use simulator::ws::{error_type, is_success, DojoWs};
use std::time::Duration;
use support::*;

const KEY: &str = "sk_sandbox_test_key";
const REPLY: Duration = Duration::from_secs(10);

async fn dojo_ws() -> DojoWs {
    DojoWs::bind("127.0.0.1:0", Some(KEY.into())).await.unwrap()
}

fn ws_ingress(services: &Services, ws: &DojoWs) -> Running {
    let url = ws.url();
    ingress(
        services,
        &[
            ("DOJO_WS_URL", &url),
            ("DOJO_API_KEY", KEY),
            ("DOJO_SOFTWARE_HOUSE_ID", "shid-test"),
            ("DOJO_RESELLER_ID", "reseller-test"),
            ("INGRESS_WS_PING_MS", "200"),
            ("INGRESS_WS_RECONNECT_MAX_MS", "300"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_are_answered_and_land_with_channel_ws() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    let processor = processor(&services, &[]).await;
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;

    let handshake = &ws.handshakes()[0];
    assert_eq!(handshake["authorization"], format!("Basic {KEY}"));
    assert_eq!(handshake["software-house-id"], "shid-test");
    assert_eq!(handshake["reseller-id"], "reseller-test");

    let events: Vec<Event> = (0..50)
        .map(|i| {
            Event::new(
                &format!("evt_ws_{i}"),
                "payment_intent.created",
                &format!("pi_ws_{i}"),
                "Created",
                Utc::now(),
            )
        })
        .collect();
    let headers = json!({"waiterId": "42", "dojoRequestingProduct": "Order&Pay", "deviceId": "tm_1", "deviceType": "Dojo Terminal"});
    let bodies: Vec<String> = events.iter().map(Event::body).collect();
    let replies = futures::future::join_all(
        bodies
            .iter()
            .map(|b| ws.handle_event(b, Some(headers.clone()), REPLY)),
    )
    .await;
    for reply in replies {
        let reply = reply.unwrap();
        assert!(is_success(&reply), "{reply}");
    }

    processor.settled(50).await;
    let pool = services.db.pool().await.unwrap();
    let ws_rows = count(
        &pool,
        "SELECT count(*) FROM dojo_events WHERE channel = 'ws' AND outcome = 'applied'",
    )
    .await;
    assert_eq!(ws_rows, 50);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM payment_intents WHERE status = 'Created'"
        )
        .await,
        50
    );
    // The stored payload is the event without the requestor headers.
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM dojo_events WHERE event_id = 'evt_ws_7'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        payload,
        serde_json::from_str::<serde_json::Value>(&events[7].body()).unwrap()
    );
    assert!(ws.strays().is_empty(), "{:?}", ws.strays());
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_epos_errors_and_the_socket_survives_them() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;

    let invalid = ws
        .call(
            "HandleEventV1",
            json!({"id": "evt_x", "event": "payment_intent.created"}),
            REPLY,
        )
        .await
        .unwrap();
    assert_eq!(error_type(&invalid), Some("InvalidRequest"), "{invalid}");
    assert_eq!(invalid["method"], "HandleEventV1");
    assert!(invalid["error"]["traceId"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let not_json_params = ws
        .call("HandleEventV1", json!([1, 2, 3]), REPLY)
        .await
        .unwrap();
    assert_eq!(error_type(&not_json_params), Some("InvalidRequest"));

    let unknown = ws
        .call("SearchOrdersV1", json!({"query": "x"}), REPLY)
        .await
        .unwrap();
    assert_eq!(error_type(&unknown), Some("NotFound"), "{unknown}");
    assert_eq!(unknown["method"], "SearchOrdersV1");

    // A request with an id is answered even when it cannot be handled: no method, or a
    // binary frame that is not UTF-8 (never stored with its bytes replaced).
    let no_method = ws
        .call_frame(
            "no-method",
            Message::Text(r#"{"jsonrpc":"2.0","id":"no-method","params":{}}"#.into()),
            REPLY,
        )
        .await
        .unwrap();
    assert_eq!(
        error_type(&no_method),
        Some("InvalidRequest"),
        "{no_method}"
    );
    let event = Event::new(
        "evt_not_utf8",
        "payment_intent.created",
        "pi_u",
        "Created",
        Utc::now(),
    );
    let mut bytes = format!(
        r#"{{"jsonrpc":"2.0","id":"not-utf8","method":"HandleEventV1","params":{}}}"#,
        event.body()
    )
    .into_bytes();
    let at = bytes.windows(3).position(|w| w == b"pi_").unwrap();
    bytes[at + 2] = 0xff;
    let not_utf8 = ws
        .call_frame("not-utf8", Message::Binary(bytes.into()), REPLY)
        .await
        .unwrap();
    assert_eq!(error_type(&not_utf8), Some("InvalidRequest"), "{not_utf8}");
    assert!(not_utf8["error"]["debugMessage"]
        .as_str()
        .is_some_and(|m| m.contains("UTF-8")));

    // A frame that is not JSON is logged, not answered, and does not kill the socket.
    ws.send_text("this is not json".into()).unwrap();
    let good = Event::new(
        "evt_after_garbage",
        "payment_intent.created",
        "pi_g",
        "Created",
        Utc::now(),
    );
    let reply = ws.handle_event(&good.body(), None, REPLY).await.unwrap();
    assert!(is_success(&reply), "{reply}");
    assert_eq!(ws.connections(), 1);
    assert_eq!(
        services
            .vhost
            .ready_messages(common::topology::PROCESSOR_QUEUE)
            .await
            .unwrap(),
        1
    );
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_reopened_and_processing_resumes() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    let processor = processor(&services, &[]).await;
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    let first = Event::new(
        "evt_before_drop",
        "payment_intent.created",
        "pi_d",
        "Created",
        Utc::now(),
    );
    assert!(is_success(
        &ws.handle_event(&first.body(), None, REPLY).await.unwrap()
    ));

    ws.drop_connection();
    ws.wait_for_connection(2, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let second = Event::new(
        "evt_after_drop",
        "payment_intent.status_updated",
        "pi_d",
        "Captured",
        Utc::now(),
    );
    assert!(is_success(
        &ws.handle_event(&second.body(), None, REPLY).await.unwrap()
    ));

    processor.settled(2).await;
    let pool = services.db.pool().await.unwrap();
    assert_eq!(intent(&pool, "pi_d").await.unwrap().status, "Captured");
    assert_eq!(
        ws.handshakes().len(),
        2,
        "both handshakes carried the headers"
    );
    assert!(ws
        .handshakes()
        .iter()
        .all(|h| h["authorization"] == format!("Basic {KEY}")));
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_gives_unexpected_error_replies_never_result() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;

    services.vhost.outage().unwrap();
    let http = reqwest::Client::new();
    wait_until("readyz 503", PATIENCE, || async {
        let r = http
            .get(format!("{}/readyz", ingress.url))
            .send()
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    let events: Vec<Event> = (0..10)
        .map(|i| {
            Event::new(
                &format!("evt_out_{i}"),
                "payment_intent.created",
                "pi_out",
                "Created",
                Utc::now(),
            )
        })
        .collect();
    let bodies: Vec<String> = events.iter().map(Event::body).collect();
    let replies =
        futures::future::join_all(bodies.iter().map(|b| ws.handle_event(b, None, REPLY))).await;
    for reply in replies {
        let reply = reply.unwrap();
        assert!(reply.get("result").is_none(), "{reply}");
        assert_eq!(error_type(&reply), Some("UnexpectedError"), "{reply}");
    }

    services.vhost.restore().unwrap();
    ready(&ingress.url).await;
    assert!(is_success(
        &ws.handle_event(&events[0].body(), None, REPLY)
            .await
            .unwrap()
    ));
    assert_eq!(
        services
            .vhost
            .ready_messages(common::topology::PROCESSOR_QUEUE)
            .await
            .unwrap(),
        1
    );
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_over_websocket_and_webhook_is_applied_once() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    let processor = processor(&services, &[]).await;
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let event = Event::new(
        "evt_both",
        "payment_intent.created",
        "pi_both",
        "Created",
        Utc::now(),
    );
    let (body, http) = (event.body(), dojo(&ingress));
    let (over_ws, over_webhook) =
        tokio::join!(ws.handle_event(&body, None, REPLY), http.webhook(&body));
    assert!(is_success(&over_ws.unwrap()));
    assert_eq!(over_webhook.unwrap().status(), 200);
    processor.settled(2).await;
    let pool = services.db.pool().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM dojo_events").await, 1);
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_payments_with_duplicates_and_disorder_end_in_their_final_status() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    let processor = processor(&services, &[]).await;
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;

    let scenario =
        simulator::scenario::lifecycles("acc_sim", 1000, 0.3, 2026).with_late(0.05, 2026);
    let targets = Targets {
        ws: Some(ws.clone()),
        http: Some(dojo(&ingress)),
        ..Targets::default()
    };
    let options = Options {
        channels: vec![Via::Ws, Via::Webhook, Via::Rest],
        rate: None,
        concurrency: 32,
        doubling: 0.1,
        seed: 2026,
        timeout: REPLY,
    };
    let report = simulator::run::run(&scenario, &targets, &options).await;
    println!("{report:?}");
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.acknowledged, report.sent);
    assert!(report.channels.len() == 3 && report.channels.values().all(|c| c.acknowledged > 0));

    processor.settled(report.sent).await;
    let verification = simulator::verify::verify(
        &processor.running.url,
        API_TOKEN,
        &scenario.expected,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(verification.checked, 1000);
    assert!(
        verification.mismatched.is_empty(),
        "{:?}",
        &verification.mismatched[..verification.mismatched.len().min(5)]
    );
    let pool = services.db.pool().await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM dojo_events").await,
        scenario.distinct as i64
    );
    ingress.stop().await;
    processor.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_detected_and_replaced() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    // The TCP connection stays up, but Dojo no longer answers pings.
    ws.freeze();
    ws.wait_for_connection(2, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let event = Event::new(
        "evt_after_freeze",
        "payment_intent.created",
        "pi_f",
        "Created",
        Utc::now(),
    );
    assert!(is_success(
        &ws.handle_event(&event.body(), None, REPLY).await.unwrap()
    ));
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_what_was_read_then_closes_the_socket_cleanly() {
    let services = Services::new().await.unwrap();
    let ws = dojo_ws().await;
    let ingress = ws_ingress(&services, &ws);
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let bodies: Vec<String> = (0..20)
        .map(|i| {
            Event::new(
                &format!("evt_sd_{i}"),
                "payment_intent.created",
                "pi_sd",
                "Created",
                Utc::now(),
            )
            .body()
        })
        .collect();
    let pending = futures::future::join_all(bodies.iter().map(|b| ws.handle_event(b, None, REPLY)));
    let (replies, ()) = tokio::join!(pending, async {
        // Stop as soon as the first request has been queued, while others are in flight.
        wait_until("a first event queued", PATIENCE, || async {
            (services
                .vhost
                .ready_messages(common::topology::PROCESSOR_QUEUE)
                .await
                .ok()?
                > 0)
            .then_some(())
        })
        .await;
        ingress.stop().await;
    });
    // Every request either got its success reply or was never read (Dojo retries those);
    // none got a failure because of the shutdown.
    let answered: Vec<_> = replies.into_iter().filter_map(Result::ok).collect();
    assert!(!answered.is_empty());
    assert!(answered.iter().all(is_success), "{answered:?}");
    let queued = services
        .vhost
        .ready_messages(common::topology::PROCESSOR_QUEUE)
        .await
        .unwrap();
    assert!(
        queued as usize >= answered.len(),
        "every success reply is durable"
    );
    wait_until("a close frame", PATIENCE, || async {
        (!ws.closes().is_empty()).then_some(())
    })
    .await;
    assert_eq!(ws.closes()[0].0, 1001, "going away");
}
