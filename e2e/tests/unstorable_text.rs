//! Text PostgreSQL refuses, on every channel: an id it can never store is refused at
//! once (400 / `InvalidRequest`), and any other valid JSON body that is acknowledged is
//! stored, losslessly, with its payment applied; never dead-lettered.

mod support;

use chrono::Utc;
use common::topology::{DEAD_QUEUE, PROCESSOR_QUEUE};
use e2e::isolation::Services;
use e2e::wait_until;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};
use simulator::event::Event;
use simulator::ws::{error_type, is_success, DojoWs};
use std::time::Duration;
use support::*;

const KEY: &str = "sk_sandbox_unstorable";
const REPLY: Duration = Duration::from_secs(10);

/// Ingress with all three channels: webhook, REST and a WebSocket to `ws`.
fn three_channel_ingress(services: &Services, ws: &DojoWs) -> Running {
    let url = ws.url();
    ingress(services, &[("DOJO_WS_URL", &url), ("DOJO_API_KEY", KEY)])
}

fn body(id: &str, pi: &str) -> String {
    Event::new(id, "payment_intent.created", pi, "Created", Utc::now()).body()
}

/// `body` with its text `field` value replaced by `value` (raw JSON string contents).
fn with_field(body: &str, old: &str, value: &str) -> String {
    body.replace(&format!("\"{old}\""), &format!("\"{value}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_nul_is_refused_on_every_channel_and_nothing_is_queued() {
    let services = Services::new().await.unwrap();
    let ws = DojoWs::bind("127.0.0.1:0", Some(KEY.into())).await.unwrap();
    let ingress = three_channel_ingress(&services, &ws);
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);

    let base = body("evt_nul", "pi_nul");
    // Every field stored as text, with NUL in a few places.
    let bad: Vec<String> = [
        ("evt_nul", "evt_\\u0000nul"),
        ("evt_nul", "\\u0000"),
        ("acc_test", "acc_test\\u0000"),
        ("pi_nul", "pi_\\u0000"),
        ("pi_nul", "\\u0000pi_nul"),
        ("payment_intent.created", "payment_intent.created\\u0000"),
        ("Created", "Crea\\u0000ted"),
        ("Auto", "\\u0000Auto"),
    ]
    .iter()
    .map(|(old, new)| with_field(&base, old, new))
    .collect();
    for body in &bad {
        assert_ne!(body, &base);
        for response in [dojo.webhook(body).await, dojo.rest(body).await] {
            let response = response.unwrap();
            assert_eq!(response.status(), 400, "{body}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["errorType"], "InvalidRequest", "{body}");
            assert!(
                error["debugMessage"].as_str().unwrap().contains("NUL"),
                "{error}"
            );
        }
        let reply = ws.handle_event(body, None, REPLY).await.unwrap();
        assert_eq!(
            error_type(&reply),
            Some("InvalidRequest"),
            "{body}: {reply}"
        );
    }
    assert_eq!(
        services
            .vhost
            .ready_messages(PROCESSOR_QUEUE)
            .await
            .unwrap(),
        0,
        "nothing refused was queued"
    );
    ingress.stop().await;
}

/// Bodies whose unknown fields `jsonb` cannot hold as they are.
fn odd_bodies(n: usize) -> Vec<(String, String, String)> {
    let extras = [
        r#""note":"a\u0000b""#,
        r#""\u0000":"nul key""#,
        r#""lone":"\ud800","other":"x\udfff""#,
        r#""big":1e999999,"tiny":-2.5E-400"#,
        r#""dup":1,"dup":2"#,
        r#""nested":{"deep":["\u0000",{"k":"\udbff"}]}"#,
    ];
    (0..n)
        .map(|i| {
            let (id, pi) = (format!("evt_odd_{i}"), format!("pi_odd_{i}"));
            let extra = extras[i % extras.len()];
            let body = body(&id, &pi).replacen('{', &format!("{{{extra},"), 1);
            (id, pi, body)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_valid_json_body_acknowledged_is_stored_exactly_and_applied() {
    let services = Services::new().await.unwrap();
    let ws = DojoWs::bind("127.0.0.1:0", Some(KEY.into())).await.unwrap();
    let ingress = three_channel_ingress(&services, &ws);
    let processor = processor(&services, &[]).await;
    ws.wait_for_connection(1, PATIENCE).await.unwrap();
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);

    // Webhook and REST carry the body byte for byte.
    let http = odd_bodies(12);
    for (i, (_, _, body)) in http.iter().enumerate() {
        let response = if i % 2 == 0 {
            dojo.webhook(body).await
        } else {
            dojo.rest(body).await
        };
        assert_eq!(response.unwrap().status(), 200, "{body}");
    }
    // The socket's params are JSON values: NUL escapes in unknown fields.
    let ws_events: Vec<(String, String)> = (0..3)
        .map(|i| (format!("evt_odd_ws_{i}"), format!("pi_odd_ws_{i}")))
        .collect();
    for (i, (id, pi)) in ws_events.iter().enumerate() {
        let mut params: Value = serde_json::from_str(&body(id, pi)).unwrap();
        params["note"] = json!(format!("ws\u{0}{i}"));
        params["data"]["extra"] = json!({"\u{0}": [i, "\u{0}"]});
        let reply = ws
            .handle_event(&params.to_string(), None, REPLY)
            .await
            .unwrap();
        assert!(is_success(&reply), "{reply}");
    }
    // And every odd body the HTTP routes took, as raw params text, stored byte for byte.
    let over_ws: Vec<(String, String, String)> = odd_bodies(6)
        .into_iter()
        .map(|(id, pi, body)| {
            let (ws_id, ws_pi) = (format!("{id}_ws"), format!("{pi}_ws"));
            let body = body
                .replace(&format!("\"{id}\""), &format!("\"{ws_id}\""))
                .replace(&format!("\"{pi}\""), &format!("\"{ws_pi}\""));
            (ws_id, ws_pi, body)
        })
        .collect();
    for (_, _, body) in &over_ws {
        let reply = ws
            .call_raw(None, "HandleEventV1", body, REPLY)
            .await
            .unwrap();
        assert!(is_success(&reply), "{body}: {reply}");
    }

    let pool = services.db.pool().await.unwrap();
    let everyone: Vec<&str> = http
        .iter()
        .chain(&over_ws)
        .map(|(_, pi, _)| pi.as_str())
        .chain(ws_events.iter().map(|(_, pi)| pi.as_str()))
        .collect();
    for pi in &everyone {
        let record = wait_until(&format!("{pi} stored"), PATIENCE, || intent(&pool, pi)).await;
        assert_eq!(record.status, "Created");
    }
    for (id, _, body) in http.iter().chain(&over_ws) {
        let (payload, exact): (Value, Option<String>) =
            sqlx::query_as("SELECT payload, payload_text FROM dojo_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(exact.as_deref(), Some(body.as_str()), "kept exactly");
        assert_eq!(payload["id"], id.as_str(), "the jsonb copy is usable");
        assert_eq!(payload["data"]["paymentStatus"], "Created");
    }
    let note: String =
        sqlx::query_scalar("SELECT payload->>'note' FROM dojo_events WHERE event_id = 'evt_odd_0'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(note, "a\u{FFFD}b");
    for (id, _) in &ws_events {
        let exact: String =
            sqlx::query_scalar("SELECT payload_text FROM dojo_events WHERE event_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let exact: Value = serde_json::from_str(&exact).unwrap();
        assert!(exact["note"].as_str().unwrap().contains('\u{0}'), "{exact}");
    }
    // An ordinary body needs no exact copy.
    assert_eq!(
        dojo.webhook(&body("evt_plain", "pi_plain"))
            .await
            .unwrap()
            .status(),
        200
    );
    wait_until("pi_plain", PATIENCE, || intent(&pool, "pi_plain")).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM dojo_events WHERE payload_text IS NULL"
        )
        .await,
        1
    );
    assert_eq!(services.vhost.ready_messages(DEAD_QUEUE).await.unwrap(), 0);
    processor.running.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn such_a_body_dead_lettered_by_an_older_version_is_replayed_and_stored() {
    let services = Services::new().await.unwrap();
    let processor = processor(&services, &[]).await;
    // What an older processor left in the dead-letter queue.
    let (_, _, event) = odd_bodies(1).remove(0);
    let envelope = format!(
        r#"{{"v":1,"channel":"webhook","receivedAt":"{}","event":{event}}}"#,
        Utc::now().to_rfc3339()
    );
    let conn = lapin::Connection::connect(&services.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-dead-reason".into(),
        lapin::types::AMQPValue::LongString(
            "database rejected the event: unsupported Unicode escape sequence".into(),
        ),
    );
    channel
        .basic_publish(
            "".into(),
            DEAD_QUEUE.into(),
            BasicPublishOptions::default(),
            envelope.as_bytes(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("evt_odd_0".into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;

    let replayed = processor::dlq::replay(
        &services.vhost.amqp_url(),
        &processor::dlq::Selection::EventId("evt_odd_0".into()),
    )
    .await
    .unwrap();
    assert_eq!(replayed.chosen, 1);
    let pool = services.db.pool().await.unwrap();
    let record = wait_until("pi_odd_0 stored", PATIENCE, || intent(&pool, "pi_odd_0")).await;
    assert_eq!(record.status, "Created");
    let exact: String =
        sqlx::query_scalar("SELECT payload_text FROM dojo_events WHERE event_id = 'evt_odd_0'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(exact, event);
    assert_eq!(services.vhost.ready_messages(DEAD_QUEUE).await.unwrap(), 0);
    processor.running.stop().await;
}
