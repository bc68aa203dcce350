//! The processor binary, SIGKILLed twice in the middle of a backlog, leaves every
//! distinct event applied exactly once and every payment in its correct final status;
//! then SIGTERM stops it cleanly (exit 0).

use common::{Channel, Envelope, RequestorHeaders};
use e2e::isolation::Services;
use e2e::wait_until;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::value::RawValue;
use simulator::scenario::lifecycles;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(120);

fn start(services: &Services) -> Child {
    Command::new(env!("CARGO_BIN_EXE_processor"))
        .env("PROCESSOR_ADDR", "127.0.0.1:0")
        .env("AMQP_URL", services.vhost.amqp_url())
        .env("DATABASE_URL", services.db.url())
        .env("REDIS_KEY_PREFIX", &services.redis_prefix)
        .env("PROCESSOR_DONE_TTL_SECS", "600")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("processor starts")
}

async fn applied(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM dojo_events")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backlog_loses_nothing_and_applies_nothing_twice() {
    let services = Services::new().await.unwrap();
    let scenario = lifecycles("acc_crash", 1000, 0.3, 42);

    // The backlog: every delivery queued before the processor starts.
    let conn = lapin::Connection::connect(&services.vhost.amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    common::topology::declare(&channel).await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for event in &scenario.deliveries {
        let body = event.body();
        let raw = RawValue::from_string(body).unwrap();
        let message = Envelope::new(Channel::Rest, RequestorHeaders::default(), &raw).to_bytes();
        // Confirms are awaited all at once below (wait_for_confirms).
        let confirm = channel
            .basic_publish(
                common::topology::EXCHANGE.into(),
                event.kind.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        drop(confirm);
    }
    assert!(channel.wait_for_confirms().await.unwrap().is_empty());
    let _ = conn.close(200, "backlog queued".into()).await;
    println!(
        "queued {} deliveries of {} distinct events",
        scenario.deliveries.len(),
        scenario.distinct
    );

    let mut processor = start(&services);
    let pool = wait_until("the database", PATIENCE, || async {
        let pool = services.db.pool().await.ok()?;
        (applied(&pool).await > 0).then_some(pool)
    })
    .await;
    for kill in 1..=2 {
        let before = applied(&pool).await;
        wait_until("progress before the kill", PATIENCE, || async {
            (applied(&pool).await >= before + 300).then_some(())
        })
        .await;
        processor.kill().unwrap(); // SIGKILL
        processor.wait().unwrap();
        println!(
            "kill {kill}: {} events applied at the kill",
            applied(&pool).await
        );
        processor = start(&services);
    }

    wait_until("every distinct event applied", PATIENCE, || async {
        (applied(&pool).await == scenario.distinct as i64).then_some(())
    })
    .await;
    wait_until("the queue drained", PATIENCE, || async {
        let ready = services
            .vhost
            .ready_messages(common::topology::PROCESSOR_QUEUE)
            .await
            .ok()?;
        (ready == 0).then_some(())
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &processor.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(processor.wait().unwrap().success(), "SIGTERM exits 0");

    assert_eq!(applied(&pool).await, scenario.distinct as i64);
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT payment_intent_id, status FROM payment_intents")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), scenario.expected.len());
    for (pi, status) in rows {
        assert_eq!(&status, &scenario.expected[&pi], "{pi}");
    }
    let dead = services
        .vhost
        .ready_messages(common::topology::DEAD_QUEUE)
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
}
