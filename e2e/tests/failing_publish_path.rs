//! A publish path that keeps failing while its connection looks healthy is replaced,
//! whatever the broker's reason; two reasons here: the work queue full under a
//! `max-length` policy (which leaves RabbitMQ 3.x's rejected publisher stuck on its
//! channel), and the work queue deleted (every publish comes back unroutable). Ingress
//! accepts again without a restart, and nothing it acknowledged is lost.

mod support;

use chrono::Utc;
use e2e::isolation::Services;
use e2e::wait_until;
use simulator::event::Event;
use std::process::Command;
use support::*;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn created(i: usize) -> String {
    Event::new(
        &format!("evt_full_{i}"),
        "payment_intent.created",
        &format!("pi_full_{i}"),
        "Created",
        Utc::now(),
    )
    .body()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_keeps_failing_is_replaced_and_accepts_again_without_restart() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[("INGRESS_PUBLISH_TIMEOUT_MS", "1000")]);
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    let vhost = services.vhost.name.as_str();
    rabbitmqctl(&[
        "set_policy",
        "-p",
        vhost,
        "full",
        "^dojo\\.events\\.processor$",
        r#"{"max-length":10}"#,
        "--apply-to",
        "queues",
    ]);

    // The processor is stopped: the queue fills up, the rest is refused.
    let mut ok = 0;
    for i in 0..20 {
        match dojo.webhook(&created(i)).await.unwrap().status().as_u16() {
            200 => ok += 1,
            503 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    println!(
        "20 webhooks into a queue of 10: {ok} acknowledged, {} refused",
        20 - ok
    );
    assert!((10..=11).contains(&ok), "{ok}");

    // Room again: the policy cleared and the queue drained by the processor.
    rabbitmqctl(&["clear_policy", "-p", vhost, "full"]);
    let processor = processor(&services, &[]).await;
    processor.settled(ok).await;

    // New events are accepted, by the same ingress.
    ready(&ingress.url).await;
    for i in 100..110 {
        let body = created(i);
        let status = wait_until(&format!("event {i} accepted"), PATIENCE, || async {
            let status = dojo.webhook(&body).await.ok()?.status().as_u16();
            (status == 200).then_some(status)
        })
        .await;
        assert_eq!(status, 200);
    }
    let pool = services.db.pool().await.unwrap();
    wait_until("the new events applied", PATIENCE, || async {
        (count(
            &pool,
            "SELECT count(*) FROM payment_intents WHERE payment_intent_id LIKE 'pi_full_1__'",
        )
        .await
            == 10)
            .then_some(())
    })
    .await;
    processor.running.stop().await;
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_work_queue_is_declared_again_and_events_accepted_without_restart() {
    let services = Services::new().await.unwrap();
    let ingress = ingress(&services, &[("INGRESS_PUBLISH_TIMEOUT_MS", "1000")]);
    ready(&ingress.url).await;
    let dojo = dojo(&ingress);
    assert_eq!(dojo.webhook(&created(0)).await.unwrap().status(), 200);
    let vhost = services.vhost.name.as_str();
    rabbitmqctl(&[
        "delete_queue",
        "-p",
        vhost,
        common::topology::PROCESSOR_QUEUE,
    ]);

    // Unroutable now: refused (never acknowledged into nowhere) until ingress replaces
    // its connection, which declares the topology again.
    let mut refused = 0;
    let mut accepted = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    for i in 1.. {
        assert!(
            std::time::Instant::now() < deadline,
            "{refused} refused, none accepted again"
        );
        match dojo.webhook(&created(i)).await.unwrap().status().as_u16() {
            200 => accepted.push(i),
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
        if accepted.len() == 10 {
            break;
        }
    }
    println!(
        "work queue deleted: {refused} refused, then {} acknowledged",
        accepted.len()
    );
    assert!(
        refused >= 1,
        "the first publish after the deletion is refused"
    );
    assert_eq!(accepted.len(), 10, "{refused} refused, none accepted again");

    // Every acknowledged event is applied.
    let processor = processor(&services, &[]).await;
    let pool = services.db.pool().await.unwrap();
    let want: Vec<String> = accepted.iter().map(|i| format!("pi_full_{i}")).collect();
    wait_until("every acknowledged event applied", PATIENCE, || async {
        let got: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payment_intents WHERE payment_intent_id = ANY($1)",
        )
        .bind(&want)
        .fetch_one(&pool)
        .await
        .ok()?;
        (got == want.len() as i64).then_some(())
    })
    .await;
    processor.running.stop().await;
    ingress.stop().await;
}
