//! The processor binary, SIGKILLed twice in the middle of a 5,000-delivery backlog,
//! leaves every distinct event applied exactly once and every payment in its correct
//! final status; then a SIGHUP changes nothing and SIGTERM stops it cleanly (exit 0).

mod support;

use e2e::isolation::Services;
use e2e::wait_until;
use simulator::scenario::lifecycles;
use std::time::Duration;
use support::*;

const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backlog_loses_nothing_and_applies_nothing_twice() {
    let services = Services::new().await.unwrap();
    // About 1,400 lifecycles with 30% duplicates: 5,000 deliveries or a few more.
    let scenario = lifecycles("acc_crash", 1400, 0.3, 42).truncate(5000);
    let messages: Vec<(String, Vec<u8>)> = scenario
        .deliveries
        .iter()
        .map(|e| (e.id.clone(), envelope(e.body())))
        .collect();
    publish(&services, &messages).await;

    let mut processor = start(&services);
    let pool = wait_until("the database", PATIENCE, || async {
        let pool = services.db.pool().await.ok()?;
        (applied(&pool).await > 0).then_some(pool)
    })
    .await;
    let mut at_kills = Vec::new();
    for _ in 1..=2 {
        let before = applied(&pool).await;
        wait_until("progress before the kill", PATIENCE, || async {
            (applied(&pool).await >= before + 400).then_some(())
        })
        .await;
        processor.kill().unwrap(); // SIGKILL
        processor.wait().unwrap();
        at_kills.push(applied(&pool).await);
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
    // A SIGHUP (reload the locations file; there is none here) is logged, never a stop:
    // had it killed the processor, its exit status would be the signal, not 0.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &processor.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(
        terminate(processor).success(),
        "SIGHUP, then SIGTERM exits 0"
    );

    assert_eq!(applied(&pool).await, scenario.distinct as i64);
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT payment_intent_id, status FROM payment_intents")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), scenario.expected.len());
    for (pi, status) in rows {
        assert_eq!(status, scenario.expected[&pi], "{pi}");
    }
    assert_eq!(
        services
            .vhost
            .ready_messages(common::topology::DEAD_QUEUE)
            .await
            .unwrap(),
        0,
        "nothing dead-lettered"
    );
    println!(
        "sigkill: queued {} deliveries of {} distinct events; killed at {:?} applied; all {} applied once",
        scenario.deliveries.len(),
        scenario.distinct,
        at_kills,
        scenario.distinct
    );
}

/// A processor still waiting for PostgreSQL (unreachable) survives a SIGHUP and stops
/// cleanly on SIGTERM: exit 0, as the contract says of a stop, not the signals' default
/// death (129, 143).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_postgres_exits_0() {
    use std::io::{BufRead, BufReader};
    let services = Services::new().await.unwrap();
    // Port 1 refuses every connection: "PostgreSQL unreachable; waiting".
    let mut processor = command(&services)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("processor starts");
    let stdout = processor.stdout.take().unwrap();
    let waiting = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("PostgreSQL unreachable"))
    });
    assert!(
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap()
            .unwrap(),
        "the processor says it waits for PostgreSQL"
    );
    // A SIGHUP meanwhile (an operator reloading the locations) changes nothing either.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &processor.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let status = terminate(processor);
    assert!(
        status.success(),
        "SIGHUP, then SIGTERM while waiting: {status:?}"
    );
}
