//! The event path end to end: Dojo (faked) -> ingress -> RabbitMQ -> processor ->
//! PostgreSQL, on the machine's real services, each test on its own vhost, database
//! and Redis prefix.

mod support;

use chrono::{Duration as Span, Utc};
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::event::{Event, DOC_EVENT, DOC_SIGNATURE};
use support::*;

const CREATED: &str = "payment_intent.created";
const UPDATED: &str = "payment_intent.status_updated";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_webhook_lands_as_a_created_auto_payment() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;

    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/dojo", ingress.url))
        .header("content-type", "application/json")
        .header("dojo-signature", DOC_SIGNATURE)
        .body(DOC_EVENT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "{}\n");

    let pool = services.db.pool().await.unwrap();
    let record = wait_until("the payment intent", PATIENCE, || {
        intent(&pool, "pi_vpwd4ooAPEqyNAQe4z89WQ")
    })
    .await;
    assert_eq!(record.status, "Created");
    assert_eq!(record.capture_mode.as_deref(), Some("Auto"));
    assert_eq!(record.last_event_id, "evt_hnnHxIKR_Uy6bhZCusCltw");
    assert_eq!(
        events_of(&pool, "pi_vpwd4ooAPEqyNAQe4z89WQ").await,
        vec![(
            "evt_hnnHxIKR_Uy6bhZCusCltw".into(),
            "webhook".into(),
            "applied".into()
        )]
    );
    // The stored payload is the event as received, and the read API serves the record.
    let payload: serde_json::Value = sqlx::query_scalar("SELECT payload FROM dojo_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        payload,
        serde_json::from_str::<serde_json::Value>(DOC_EVENT).unwrap()
    );
    let api: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/payment-intents/pi_vpwd4ooAPEqyNAQe4z89WQ",
            processor.running.url
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["status"], "Created");
    assert_eq!(api["captureMode"], "Auto");
    assert_eq!(api["events"].as_array().unwrap().len(), 1);
    // Dojo's createdAt as Dojo wrote it: all 7 fractional digits.
    assert_eq!(
        api["events"][0]["createdAt"],
        "2022-02-01T13:07:41.8667859Z"
    );

    processor.running.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twenty_times_over_two_channels_is_recorded_once() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let body = Event::new("evt_twenty", CREATED, "pi_twenty", "Created", Utc::now()).body();

    let sends = (0..20).map(|i| {
        let (dojo, body) = (dojo.clone(), body.clone());
        async move {
            let r = if i % 2 == 0 {
                dojo.webhook(&body).await
            } else {
                dojo.rest(&body).await
            };
            r.unwrap().status().as_u16()
        }
    });
    let statuses = futures::future::join_all(sends).await;
    assert_eq!(statuses, vec![200; 20]);

    processor.settled(20).await;
    let pool = services.db.pool().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM dojo_events").await, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM payment_intents").await,
        1
    );
    assert_eq!(intent(&pool, "pi_twenty").await.unwrap().status, "Created");
    processor.running.stop().await;
    ingress.stop().await;
}

/// Sends one event and waits until the processor has settled it.
async fn deliver(dojo: &simulator::Dojo, processor: &RunningProcessor, event: &Event, n: u64) {
    assert_eq!(dojo.webhook(&event.body()).await.unwrap().status(), 200);
    processor.settled(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_event_by_created_at_wins_whatever_the_arrival_order() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let pool = services.db.pool().await.unwrap();
    let t0 = Utc::now() - Span::minutes(10);

    // status_updated before created: the update creates the row; created is stale.
    let captured = Event::new("evt_a2", UPDATED, "pi_a", "Captured", t0 + Span::seconds(2));
    let created = Event::new("evt_a1", CREATED, "pi_a", "Created", t0);
    deliver(&dojo, &processor, &captured, 1).await;
    assert_eq!(intent(&pool, "pi_a").await.unwrap().status, "Captured");
    deliver(&dojo, &processor, &created, 2).await;
    let a = intent(&pool, "pi_a").await.unwrap();
    assert_eq!(
        (a.status.as_str(), a.last_event_id.as_str()),
        ("Captured", "evt_a2")
    );

    // Manual capture: an old Authorized after a newer Captured is stale.
    let mut lifecycle = [
        Event::new("evt_b1", CREATED, "pi_b", "Created", t0),
        Event::new("evt_b3", UPDATED, "pi_b", "Captured", t0 + Span::seconds(3)),
        Event::new(
            "evt_b2",
            UPDATED,
            "pi_b",
            "Authorized",
            t0 + Span::seconds(2),
        ),
    ];
    for e in lifecycle.iter_mut() {
        e.capture_mode = "Manual".into();
    }
    for (i, e) in lifecycle.iter().enumerate() {
        deliver(&dojo, &processor, e, 3 + i as u64).await;
    }
    let b = intent(&pool, "pi_b").await.unwrap();
    assert_eq!(
        (b.status.as_str(), b.capture_mode.as_deref()),
        ("Captured", Some("Manual"))
    );

    // A replay of an old event (same id) changes nothing and adds no row.
    deliver(&dojo, &processor, &lifecycle[0], 6).await;
    assert_eq!(intent(&pool, "pi_b").await.unwrap(), b);

    // Same createdAt: the later lifecycle stage wins, in either order.
    let tie = t0 + Span::seconds(5);
    deliver(
        &dojo,
        &processor,
        &Event::new("evt_c2", UPDATED, "pi_c", "Refunded", tie),
        7,
    )
    .await;
    deliver(
        &dojo,
        &processor,
        &Event::new("evt_c1", UPDATED, "pi_c", "Captured", tie),
        8,
    )
    .await;
    assert_eq!(intent(&pool, "pi_c").await.unwrap().status, "Refunded");

    let outcomes = |rows: Vec<(String, String, String)>| {
        rows.into_iter()
            .map(|(id, _, o)| (id, o))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcomes(events_of(&pool, "pi_a").await),
        vec![
            ("evt_a1".into(), "stale".into()),
            ("evt_a2".into(), "applied".into())
        ]
    );
    assert_eq!(
        outcomes(events_of(&pool, "pi_b").await),
        vec![
            ("evt_b1".into(), "applied".into()),
            ("evt_b2".into(), "stale".into()),
            ("evt_b3".into(), "applied".into())
        ]
    );
    assert_eq!(
        outcomes(events_of(&pool, "pi_c").await),
        vec![
            ("evt_c1".into(), "stale".into()),
            ("evt_c2".into(), "applied".into())
        ]
    );
    processor.running.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_and_values_are_accepted_kept_and_change_nothing() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(&services, &[]).await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let pool = services.db.pool().await.unwrap();
    let t0 = Utc::now() - Span::minutes(10);

    deliver(
        &dojo,
        &processor,
        &Event::new("evt_u1", CREATED, "pi_u", "Created", t0),
        1,
    )
    .await;
    let mut unknown_status = Event::new(
        "evt_u2",
        UPDATED,
        "pi_u",
        "PartiallyRefunded",
        t0 + Span::seconds(1),
    );
    unknown_status.capture_mode = "Deferred".into();
    deliver(&dojo, &processor, &unknown_status, 2).await;
    let unknown_type = Event::new(
        "evt_u3",
        "payment_intent.amount_adjusted",
        "pi_u",
        "Canceled",
        t0 + Span::seconds(2),
    );
    deliver(&dojo, &processor, &unknown_type, 3).await;

    let u = intent(&pool, "pi_u").await.unwrap();
    assert_eq!(
        (u.status.as_str(), u.capture_mode.as_deref()),
        ("Created", Some("Auto"))
    );
    let rows = events_of(&pool, "pi_u").await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].2, "ignored");
    assert_eq!(rows[2].2, "ignored");
    processor.running.stop().await;
    ingress.stop().await;
}
