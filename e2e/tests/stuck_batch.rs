//! A batch stuck on a lock past RabbitMQ's consumer timeout (possible only when
//! `PROCESSOR_DB_LOCK_TIMEOUT_MS` is set above the broker's `consumer_timeout`): the
//! broker closes that channel, and the processor replaces it at once, while the lock is
//! still held, rather than when the wait ends; once the lock ends, everything is
//! applied exactly once. On a private node (`e2e::private_broker`) whose consumer
//! timeout is set to 3 s (node-wide, so never on the shared broker).

mod support;

use chrono::{Duration as Span, Utc};
use e2e::isolation::Services;
use e2e::private_broker::PrivateBroker;
use e2e::wait_until;
use simulator::event::Event;
use std::time::{Duration, Instant};
use support::*;

/// How long the POS holds its lock: far beyond the consumer timeout.
const HELD: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_closed_under_a_stuck_batch_is_replaced_while_the_lock_is_held() {
    let broker = tokio::task::spawn_blocking(|| {
        let b = PrivateBroker::start()?;
        b.ctl(&[
            "eval",
            "application:set_env(rabbit, consumer_timeout, 3000).",
        ])?;
        b.ctl(&[
            "eval",
            "application:set_env(rabbit, channel_tick_interval, 500).",
        ])?;
        anyhow::Ok(b)
    })
    .await
    .unwrap()
    .unwrap();
    let services = Services::new().await.unwrap();
    let url = broker.amqp_url();
    let ingress = ingress(&services, &[("AMQP_URL", &url)]);
    // Waits on the lock far longer than the consumer timeout: only the broker ends them.
    let processor = processor(
        &services,
        &[
            ("AMQP_URL", &url),
            ("PROCESSOR_CHANNELS", "2"),
            ("PROCESSOR_DB_LOCK_TIMEOUT_MS", "60000"),
            ("PROCESSOR_DB_STATEMENT_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let pool = services.db.pool().await.unwrap();
    let start = Utc::now() - Span::minutes(1);
    let pi = "pi_stuck";
    let created = Event::new(
        "evt_stuck_0",
        "payment_intent.created",
        pi,
        "Created",
        start,
    );
    assert_eq!(dojo.webhook(&created.body()).await.unwrap().status(), 200);
    wait_until(pi, PATIENCE, || intent(&pool, pi)).await;

    let tx = pos_holds(&pool, &[pi]).await;
    let locked_at = Instant::now();
    let reconnects_before = processor.worker.metrics.broker_reconnects.get();

    let mut bodies = vec![Event::new(
        "evt_stuck_1",
        "payment_intent.status_updated",
        pi,
        "Captured",
        start + Span::seconds(1),
    )
    .body()];
    bodies.extend((0..100).map(|i| {
        Event::new(
            &format!("evt_other_{i}"),
            "payment_intent.created",
            &format!("pi_other_{i}"),
            "Created",
            start,
        )
        .body()
    }));
    let statuses = futures::future::join_all(bodies.iter().map(|b| {
        let dojo = dojo.clone();
        async move { dojo.webhook(b).await.unwrap().status().as_u16() }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // The broker closes the stuck channel after its consumer timeout; the processor is
    // consuming again on a new one while the lock is still held.
    let worker = processor.worker.clone();
    wait_until(
        "the closed channel replaced while the lock is held",
        HELD / 2,
        || async {
            (worker.metrics.broker_reconnects.get() > reconnects_before
                && worker.consuming.load(std::sync::atomic::Ordering::SeqCst))
            .then_some(())
        },
    )
    .await;
    let replaced_after = locked_at.elapsed();
    println!("stuck channel closed by the broker and replaced {replaced_after:?} after the lock was taken (consumer timeout 3 s, lock held up to {HELD:?})");
    assert!(replaced_after < HELD / 2);
    assert_eq!(
        intent(&pool, pi).await.unwrap().status,
        "Created",
        "still locked"
    );

    tx.commit().await.unwrap();
    wait_until(
        "the locked payment captured after release",
        PATIENCE,
        || async { (intent(&pool, pi).await?.status == "Captured").then_some(()) },
    )
    .await;
    // The other hundred may still be in a batch redelivered from the closed channel
    // (CI once saw 74 of 102 at this point): wait for them too, then every event is
    // stored once and every payment is right.
    let at_capture = count(&pool, "SELECT count(*) FROM dojo_events").await;
    let captured = Instant::now();
    wait_until("all 102 events stored", PATIENCE, || async {
        (count(&pool, "SELECT count(*) FROM dojo_events").await == 102).then_some(())
    })
    .await;
    println!(
        "{at_capture} of 102 events stored when the locked payment was captured, all {:?} later",
        captured.elapsed()
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM payment_intents WHERE payment_intent_id LIKE 'pi_other_%' AND status = 'Created'"
        )
        .await,
        100
    );
    processor.running.stop().await;
    ingress.stop().await;
}
