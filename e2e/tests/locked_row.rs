//! A POS transaction holding payment rows locked: the processor's waits are bounded,
//! events of other payments keep flowing, the locked payments' events are applied
//! once the lock ends, and nothing is dead-lettered.

mod support;

use chrono::{Duration as Span, Utc};
use common::topology::DEAD_QUEUE;
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::event::Event;
use std::time::{Duration, Instant};
use support::*;

const CREATED: &str = "payment_intent.created";
const UPDATED: &str = "payment_intent.status_updated";
/// How long the POS holds its lock at most, were the processor not to get on.
const HELD: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_locked_by_the_pos_stall_only_their_own_payments() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(
        &services,
        &[
            ("PROCESSOR_DB_LOCK_TIMEOUT_MS", "500"),
            ("PROCESSOR_DB_STATEMENT_TIMEOUT_MS", "5000"),
            ("PROCESSOR_RETRY_DELAYS", "1s"),
            ("PROCESSOR_RETRY_ATTEMPTS", "1000"),
        ],
    )
    .await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let pool = services.db.pool().await.unwrap();
    let start = Utc::now() - Span::minutes(1);
    let locked = ["pi_locked_a", "pi_locked_b"];
    for pi in locked {
        let created = Event::new(&format!("evt_{pi}_0"), CREATED, pi, "Created", start);
        assert_eq!(dojo.webhook(&created.body()).await.unwrap().status(), 200);
        wait_until(pi, PATIENCE, || intent(&pool, pi)).await;
    }

    // The POS locks both rows, as `SELECT ... FOR UPDATE` in an open transaction.
    let tx = pos_holds(&pool, &locked).await;
    let locked_at = Instant::now();

    // An update for each locked payment first, then 200 events of other payments, in
    // parallel: they share batches and channels with the locked ones.
    let mut bodies: Vec<String> = locked
        .iter()
        .map(|pi| {
            Event::new(
                &format!("evt_{pi}_1"),
                UPDATED,
                pi,
                "Captured",
                start + Span::seconds(1),
            )
            .body()
        })
        .collect();
    bodies.extend((0..200).map(|i| {
        Event::new(
            &format!("evt_free_{i}"),
            CREATED,
            &format!("pi_free_{i}"),
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

    let free = "SELECT count(*) FROM payment_intents WHERE payment_intent_id LIKE 'pi_free_%'";
    wait_until("the 200 other payments applied", HELD / 3, || async {
        (count(&pool, free).await == 200).then_some(())
    })
    .await;
    let others_after = locked_at.elapsed();
    println!("200 other payments applied {others_after:?} after the lock was taken (lock held up to {HELD:?})");
    for pi in locked {
        assert_eq!(
            intent(&pool, pi).await.unwrap().status,
            "Created",
            "still locked"
        );
    }

    tx.commit().await.unwrap();
    let released = Instant::now();
    for pi in locked {
        wait_until(
            &format!("{pi} captured after release"),
            PATIENCE,
            || async { (intent(&pool, pi).await?.status == "Captured").then_some(()) },
        )
        .await;
    }
    println!(
        "locked payments applied {:?} after release",
        released.elapsed()
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM dojo_events").await, 204);
    assert_eq!(services.vhost.ready_messages(DEAD_QUEUE).await.unwrap(), 0);
    processor.running.stop().await;
    ingress.stop().await;
}

/// A payment locked for longer than every retry: its event is dead-lettered with the
/// number of attempts, and `dojo_processor_events_total` counts that last failure as
/// `dead`, each earlier one as `retried` (OPERATIONS.md, "Metrics").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_locked_past_every_retry_is_dead_lettered_and_counted_dead() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[]);
    let processor = processor(
        &services,
        &[
            ("PROCESSOR_DB_LOCK_TIMEOUT_MS", "200"),
            ("PROCESSOR_RETRY_DELAYS", "100ms"),
            ("PROCESSOR_RETRY_ATTEMPTS", "2"),
        ],
    )
    .await;
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let pool = services.db.pool().await.unwrap();
    let start = Utc::now() - Span::minutes(1);
    let pi = "pi_locked_long";
    let created = Event::new("evt_long_0", CREATED, pi, "Created", start);
    assert_eq!(dojo.webhook(&created.body()).await.unwrap().status(), 200);
    wait_until(pi, PATIENCE, || intent(&pool, pi)).await;

    let tx = pos_holds(&pool, &[pi]).await;
    let captured = Event::new(
        "evt_long_1",
        UPDATED,
        pi,
        "Captured",
        start + Span::seconds(1),
    );
    assert_eq!(dojo.webhook(&captured.body()).await.unwrap().status(), 200);
    wait_until("the update dead-lettered", PATIENCE, || async {
        (services.vhost.ready_messages(DEAD_QUEUE).await.ok()? == 1).then_some(())
    })
    .await;
    tx.rollback().await.unwrap();

    let outcome = |label: &str| {
        processor
            .worker
            .metrics
            .processed
            .with_label_values(&[label])
            .get()
    };
    assert_eq!(
        outcome("dead"),
        1,
        "the last attempt's failure is a dead letter"
    );
    assert_eq!(outcome("retried"), 2, "two attempts scheduled before it");
    assert_eq!(intent(&pool, pi).await.unwrap().status, "Created");
    processor.running.stop().await;
    ingress.stop().await;
}
