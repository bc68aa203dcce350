//! RabbitMQ 4 gives every quorum queue a delivery limit (20 by default) and drops a
//! message past it. Under a policy that sets that limit on every queue (as 4.x does by
//! default), dead letters survive any number of `dlq list` runs and stay replayable.

mod support;

use chrono::Utc;
use common::topology::{DEAD_QUEUE, EXCHANGE};
use e2e::isolation::Services;
use e2e::wait_until;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use processor::dlq::{discard, list, replay, Selection};
use simulator::event::Event;
use std::process::Command;
use support::*;

/// Sets RabbitMQ 4's default delivery limit on every queue of the test's vhost.
fn delivery_limit_policy(vhost: &str, limit: u32) {
    let definition = format!(r#"{{"delivery-limit":{limit}}}"#);
    let out = Command::new("rabbitmqctl")
        .args(["set_policy", "-p", vhost, "limits", ".*", &definition])
        .args(["--apply-to", "queues"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes `body` confirmed to `exchange` with `routing_key`.
async fn publish(services: &Services, exchange: &str, routing_key: &str, id: &str, body: &[u8]) {
    let conn = lapin::Connection::connect(&services.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_listed_100_times_under_a_delivery_limit_of_20_is_still_there_and_replayable()
{
    let services = Services::new().await.unwrap();
    let processor = processor(&services, &[]).await;
    delivery_limit_policy(&services.vhost.name, 20);
    let url = services.vhost.amqp_url();

    // Two dead letters: garbage the processor parked itself, and a valid event an
    // older version parked (it will replay).
    publish(
        &services,
        EXCHANGE,
        "other",
        "garbage",
        b"\xde\xad not json",
    )
    .await;
    let event = Event::new(
        "evt_parked",
        "payment_intent.created",
        "pi_parked",
        "Created",
        Utc::now(),
    );
    let envelope = format!(
        r#"{{"v":1,"channel":"rest","receivedAt":"{}","event":{}}}"#,
        Utc::now().to_rfc3339(),
        event.body()
    );
    publish(&services, "", DEAD_QUEUE, "evt_parked", envelope.as_bytes()).await;
    wait_until("two dead letters", PATIENCE, || async {
        (services.vhost.ready_messages(DEAD_QUEUE).await.ok()? == 2).then_some(())
    })
    .await;

    for round in 0..100 {
        let listed = list(&url).await.unwrap().letters;
        let mut ids: Vec<_> = listed.iter().filter_map(|d| d.event_id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["evt_parked", "garbage"], "round {round}");
    }
    assert_eq!(services.vhost.ready_messages(DEAD_QUEUE).await.unwrap(), 2);

    let replayed = replay(&url, &Selection::EventId("evt_parked".into()))
        .await
        .unwrap();
    assert_eq!(replayed.chosen, 1);
    let pool = services.db.pool().await.unwrap();
    let record = wait_until("the replayed event applied", PATIENCE, || {
        intent(&pool, "pi_parked")
    })
    .await;
    assert_eq!(record.status, "Created");
    let left = list(&url).await.unwrap().letters;
    assert_eq!(left.len(), 1);
    assert!(left[0].reason.contains("not JSON"), "{:?}", left[0]);

    // What no processor will ever take is discarded after inspection, and only it.
    let garbage = Selection::EventId("garbage".into());
    assert_eq!(discard(&url, &garbage).await.unwrap().chosen, 1);
    assert_eq!(discard(&url, &garbage).await.unwrap().chosen, 0, "gone");
    assert_eq!(services.vhost.ready_messages(DEAD_QUEUE).await.unwrap(), 0);
    let record = intent(&pool, "pi_parked").await.unwrap();
    assert_eq!(record.status, "Created", "the replayed event stays applied");
    processor.running.stop().await;
}
